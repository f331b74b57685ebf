"""Black-box tests of the OpenAPI document (issue 4): openapi.yaml at the repository root
describes exactly the route table of src/http/routes.c (every row is an operation and every
operation a row, with the row's summary and the role the row needs), it is well formed OpenAPI
3.0 (bearer scheme, resolvable $refs, declared path parameters, Idempotency-Key on every /v1
command), its problem `code` enum is the code list of src/base/errors.h, and a running stockd serves
it at GET /openapi.yaml byte for byte, without a token, as application/yaml. Needs python3-yaml
(scripts/install-deps.sh test)."""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import REPO, check, check_eq, check_status, main, start_stockd  # noqa: E402

try:
    import yaml
except ImportError:  # reported by every test instead of an import traceback
    yaml = None

SPEC_PATH = os.path.join(REPO, "openapi.yaml")
ROUTES_PATH = os.path.join(REPO, "src", "http", "routes.c")
ERRORS_PATH = os.path.join(REPO, "src", "base", "errors.h")
METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
ROLES = ("read", "write", "admin", "public")
# routes_role (src/http/routes.c): these path prefixes need admin whatever the row's flags say.
ADMIN_PREFIXES = ("/v1/admin/", "/v1/dlt", "/v1/projections/rebuild")


def read_text(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def load_spec():
    check(yaml is not None, "python3 has no yaml module: apt-get install python3-yaml "
          "(scripts/install-deps.sh test)")
    spec = yaml.safe_load(read_text(SPEC_PATH))
    check(isinstance(spec, dict), "openapi.yaml is not a YAML mapping")
    return spec


def normalise(path):
    """/v1/reservations/{reservationId}:confirm and /v1/reservations/{id}:confirm compare equal."""
    return re.sub(r"\{[^}/]*\}", "{}", path)


def c_string(literals):
    """The value of adjacent C string literals ("a" "b"), escapes \\" and \\\\ only."""
    parts = re.findall(r'"((?:[^"\\]|\\.)*)"', literals)
    return "".join(re.sub(r"\\(.)", r"\1", p) for p in parts)


def route_rows():
    """[(METHOD, pattern, flags set, summary)] from the routes_table initializer, with the
    file's #define flag macros (V1_COMMAND ...) expanded."""
    text = read_text(ROUTES_PATH)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    macros = {name: set(re.findall(r"\w+", value)) for name, value in
              re.findall(r"^#define\s+(\w+)\s+\(([^)]*)\)", text, flags=re.M)}
    start = text.find("routes_table[] = {")
    check(start >= 0, "src/http/routes.c: no `routes_table[] = {`")
    end = text.find("\n};", start)
    table = text[start:end]
    head = re.compile(r'\{\s*"([A-Z]+)",\s*"(/[^"]*)",')
    row = re.compile(r'\{\s*"([A-Z]+)",\s*"(/[^"]*)",\s*(\w+),\s*([^,]+),\s*([^,]+),'
                     r'\s*((?:"(?:[^"\\]|\\.)*"\s*)+),\s*\{0\}\s*\}')
    rows = []
    for m in row.finditer(table):
        flags = set()
        for token in re.findall(r"\w+", m.group(4)):
            flags |= macros.get(token, {token})
        rows.append((m.group(1), m.group(2), flags, c_string(m.group(6))))
    heads = head.findall(table)
    check_eq(len(rows), len(heads), "route rows parsed in full (method, pattern, handler, flags,"
             " body limit, summary, stats) vs rows seen in src/http/routes.c")
    check(len(rows) >= 10, "only %d routes parsed from src/http/routes.c" % len(rows))
    return rows


def route_role(pattern, flags):
    """The role routes_role gives a row, as x-stockd-role names it."""
    if "ROUTE_ADMIN" in flags or pattern.startswith(ADMIN_PREFIXES):
        return "admin"
    if "ROUTE_PUBLIC" in flags:
        return "public"
    return "write" if "ROUTE_WRITE" in flags else "read"


def spec_operations(spec):
    """{(METHOD, normalised path): (path, operation object)}."""
    ops = {}
    for path, item in (spec.get("paths") or {}).items():
        check(isinstance(item, dict), "paths[%r] is not a mapping" % path)
        for method, op in item.items():
            if method in METHODS:
                ops[(method.upper(), normalise(path))] = (path, op)
    return ops


def resolve(spec, obj):
    """Follows a local $ref (#/components/...) to its object."""
    seen = 0
    while isinstance(obj, dict) and "$ref" in obj:
        ref = obj["$ref"]
        check(ref.startswith("#/"), "non-local $ref %r" % ref)
        target = spec
        for part in ref[2:].split("/"):
            check(isinstance(target, dict) and part in target, "unresolvable $ref %r" % ref)
            target = target[part]
        obj = target
        seen += 1
        check(seen < 20, "$ref cycle at %r" % ref)
    return obj


def all_refs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from all_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from all_refs(value)


def test_every_route_is_documented_and_vice_versa():
    spec = load_spec()
    rows = route_rows()
    table = {(method, normalise(pattern)): (pattern, flags, summary)
             for method, pattern, flags, summary in rows}
    check_eq(len(table), len(rows), "distinct (method, path) rows in src/http/routes.c")
    ops = spec_operations(spec)
    missing = sorted("%s %s" % (m, table[(m, p)][0]) for m, p in set(table) - set(ops))
    extra = sorted("%s %s" % (m, ops[(m, p)][0]) for m, p in set(ops) - set(table))
    for line in missing:
        print("in src/http/routes.c, not in openapi.yaml: " + line)
    for line in extra:
        print("in openapi.yaml, not in src/http/routes.c: " + line)
    check(not missing and not extra,
          "route table and openapi.yaml differ: %d route(s) undocumented %s, %d operation(s) "
          "with no route %s" % (len(missing), missing, len(extra), extra))
    problems = []
    for key, (pattern, flags, summary) in sorted(table.items()):
        path, op = ops[key]
        what = "%s %s" % (key[0], path)
        if op.get("summary") != summary:
            problems.append("%s: summary %r, routes.c says %r" % (what, op.get("summary"),
                                                                  summary))
        role = route_role(pattern, flags)
        if op.get("x-stockd-role") != role:
            problems.append("%s: x-stockd-role %r, routes.c gives %r" % (
                what, op.get("x-stockd-role"), role))
        if (role == "public") != (op.get("security") == []):
            problems.append("%s: `security: []` must be set exactly on public routes" % what)
        names = {p.get("name", "").lower() for p in
                 (resolve(spec, p) for p in op.get("parameters") or []) if p.get("in") == "header"}
        if "ROUTE_IDEMPOTENT" in flags and "idempotency-key" not in names:
            problems.append("%s: a /v1 command without the Idempotency-Key parameter" % what)
        if "ROUTE_JSON_BODY" in flags and "application/json" not in (
                resolve(spec, op.get("requestBody") or {}).get("content") or {}):
            problems.append("%s: takes a JSON body but documents no application/json "
                            "requestBody" % what)
    for p in problems:
        print(p)
    check(not problems, "%d mismatch(es) between routes.c rows and operations" % len(problems))


def test_document_is_openapi_3_0():
    spec = load_spec()
    check(str(spec.get("openapi", "")).startswith("3.0."), "openapi %r is not 3.0.x"
          % spec.get("openapi"))
    info = spec.get("info") or {}
    check(info.get("title") and info.get("version"), "info needs title and version: %r" % info)
    check(isinstance(spec.get("paths"), dict) and spec["paths"], "no paths")
    schemes = (spec.get("components") or {}).get("securitySchemes") or {}
    check(schemes, "components.securitySchemes is empty")
    bearer = [s for s in schemes.values() if s.get("type") == "http" and
              str(s.get("scheme", "")).lower() == "bearer"]
    check(bearer, "no http bearer security scheme in %r" % schemes)
    check(spec.get("security"), "no global security requirement (the default is bearer)")
    for ref in all_refs(spec):
        resolve(spec, {"$ref": ref})
    problems = []
    ids = set()
    for path, item in spec["paths"].items():
        check(path.startswith("/"), "path %r does not start with /" % path)
        for method, op in item.items():
            if method not in METHODS:
                continue
            what = "%s %s" % (method.upper(), path)
            for member in ("summary", "operationId", "responses"):
                if not op.get(member):
                    problems.append("%s: no %s" % (what, member))
            if op.get("operationId") in ids:
                problems.append("%s: operationId %r used twice" % (what, op.get("operationId")))
            ids.add(op.get("operationId"))
            if op.get("x-stockd-role") not in ROLES:
                problems.append("%s: x-stockd-role %r not one of %s" % (
                    what, op.get("x-stockd-role"), ROLES))
            params = [resolve(spec, p) for p in
                      (item.get("parameters") or []) + (op.get("parameters") or [])]
            declared = {p.get("name") for p in params if p.get("in") == "path"}
            for name in re.findall(r"\{([^}/]+)\}", path):
                if name not in declared:
                    problems.append("%s: path parameter %r not declared" % (what, name))
            for p in params:
                if p.get("in") == "path" and not p.get("required"):
                    problems.append("%s: path parameter %r not required" % (what, p.get("name")))
            codes = [str(c) for c in (op.get("responses") or {})]
            if not any(c.startswith("2") for c in codes):
                problems.append("%s: no 2xx response" % what)
            for code in codes:
                response = resolve(spec, op["responses"][code])
                if not response.get("description"):
                    problems.append("%s: response %s has no description" % (what, code))
                # GET /health's 503 ("down") is its own body, the checks that say why.
                if code >= "400" and "application/problem+json" not in (
                        response.get("content") or {}) and code not in ("410",) and \
                        (what, code) != ("GET /health", "503"):
                    problems.append("%s: error %s is not problem+json" % (what, code))
            if op.get("x-stockd-role") != "public" and "401" not in codes:
                problems.append("%s: needs a token but documents no 401" % what)
            if op.get("x-stockd-role") in ("write", "admin") and "403" not in codes:
                problems.append("%s: needs %s but documents no 403" % (
                    what, op.get("x-stockd-role")))
    for p in problems:
        print(p)
    check(not problems, "%d problem(s) in openapi.yaml" % len(problems))
    try:  # the full validator when this python has it (no Debian package: optional)
        from openapi_spec_validator import validate
    except ImportError:
        print("(openapi_spec_validator not installed: the full schema validation is skipped)")
        return
    validate(spec)


def test_problem_codes_match_errors_h():
    spec = load_spec()
    text = read_text(ERRORS_PATH)
    table = re.findall(r'X\(\s*\w+\s*,\s*(\d{3})\s*,\s*"([a-z_]+)"', text)
    check(len(table) >= 10, "only %d codes parsed from SVC_ERR_MAP" % len(table))
    codes = {code for _, code in table}
    problem = resolve(spec, spec["components"]["schemas"]["Problem"])
    for member in ("type", "title", "status", "code"):
        check(member in (problem.get("required") or []), "Problem does not require %r" % member)
    documented = set(problem["properties"]["code"].get("enum") or [])
    missing = sorted(codes - documented)
    extra = sorted(documented - codes)
    for code in missing:
        print("in src/base/errors.h, not in the Problem code enum: " + code)
    for code in extra:
        print("in the Problem code enum, not in src/base/errors.h: " + code)
    check(not missing and not extra, "problem codes differ: missing %s, extra %s"
          % (missing, extra))
    # Every status an error code maps to is documented on at least one operation.
    used = {str(code) for item in spec["paths"].values() for method, op in item.items()
            if method in METHODS for code in (op.get("responses") or {})}
    statuses = sorted({status for status, _ in table} - used - {"405"})  # 405: any path
    check(not statuses, "error statuses of src/base/errors.h no operation documents: %s" % statuses)


def test_served_byte_for_byte():
    with open(SPEC_PATH, "rb") as f:
        want = f.read()
    server = start_stockd()
    try:
        with server.client(token=None) as c:  # public: no token
            r = c.get("/openapi.yaml")
            check_status(r, 200, "GET /openapi.yaml without a token")
            check_eq(r.headers.get("content-type"), "application/yaml", "content type")
            check(r.body == want, "GET /openapi.yaml differs from openapi.yaml (%d vs %d bytes):"
                  " rebuild stockd after editing the file" % (len(r.body), len(want)))
            check_eq(r.headers.get("content-length"), str(len(want)), "Content-Length")
            h = c.request("HEAD", "/openapi.yaml")
            check_status(h, 200, "HEAD /openapi.yaml")
            r = c.request("POST", "/openapi.yaml", b"", {"Content-Type": "application/json"})
            check_status(r, 405, "POST /openapi.yaml")
        with server.client() as c:  # and with a token
            r = c.get("/openapi.yaml")
            check_status(r, 200, "GET /openapi.yaml with a token")
            check(r.body == want, "GET /openapi.yaml with a token differs from the file")
    finally:
        server.stop()


def test_every_operation_is_routed():
    """Each documented operation reaches a handler: without a token, a route answers 401 (or
    its own answer when public), never the dispatcher's 404 "no route" or 405."""
    spec = load_spec()
    samples = {"reservationId": "res_1", "orderId": "ord_1", "sku": "NO-SUCH", "key": "k-1"}
    server = start_stockd()
    try:
        with server.client(token=None) as c:
            for (method, _), (path, op) in sorted(spec_operations(spec).items()):
                if path == "/v1/stream":
                    continue  # 401 before it streams, but keep the connection simple
                url = re.sub(r"\{([^}/]+)\}", lambda m: samples.get(m.group(1), "x1"), path)
                r = c.request(method, url, b"" if method == "POST" else None)
                what = "%s %s" % (method, url)
                check(r.status != 405, "%s: 405, the route table has another method" % what)
                check(not (r.status == 404 and r.json and
                           r.json.get("detail") == "no route for this path"),
                      "%s: no route for this path" % what)
                if op.get("x-stockd-role") != "public":
                    check_status(r, 401, what + " without a token")
            r = c.get("/v1/stream")
            check_status(r, 401, "GET /v1/stream without a token")
    finally:
        server.stop()


# ---- bodies against the documented schemas ---------------------------------------------------

TYPES = {"object": dict, "array": list, "string": str, "boolean": bool}


def conform(spec, schema, value, where, problems):
    """A small JSON Schema check of the OpenAPI subset openapi.yaml uses: type, nullable,
    required, properties, additionalProperties, items, enum, allOf, minimum/maximum,
    min/maxItems, min/maxLength. Appends what does not conform to problems."""
    schema = resolve(spec, schema)
    if value is None:
        if not schema.get("nullable"):
            problems.append("%s: null where not nullable" % where)
        return
    for part in schema.get("allOf") or []:
        conform(spec, part, value, where, problems)
    kind = schema.get("type")
    if kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind in TYPES:
        ok = isinstance(value, TYPES[kind])
    else:
        ok = True
    if not ok:
        problems.append("%s: %r is not %s" % (where, value, kind))
        return
    if "enum" in schema and value not in schema["enum"]:
        problems.append("%s: %r not in %r" % (where, value, schema["enum"]))
    if kind == "integer":
        if value < schema.get("minimum", value) or value > schema.get("maximum", value):
            problems.append("%s: %r out of range" % (where, value))
    if kind == "string" and not schema.get("minLength", 0) <= len(value) <= schema.get(
            "maxLength", len(value)):
        problems.append("%s: length %d out of range" % (where, len(value)))
    if kind == "array":
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
            problems.append("%s: %d items out of range" % (where, len(value)))
        for i, item in enumerate(value):
            conform(spec, schema.get("items") or {}, item, "%s[%d]" % (where, i), problems)
    if kind == "object":
        props = schema.get("properties") or {}
        for name in schema.get("required") or []:
            if name not in value:
                problems.append("%s: required member %r missing" % (where, name))
        extra = schema.get("additionalProperties", not props)
        for name, member in value.items():
            if name in props:
                conform(spec, props[name], member, where + "." + name, problems)
            elif isinstance(extra, dict):
                conform(spec, extra, member, where + "." + name, problems)
            elif not extra:
                problems.append("%s: member %r is not documented" % (where, name))


def check_exchange(spec, c, method, url, body=None, key=None, want=None, headers=None):
    """Sends one request, finds its operation in the spec, checks the request body against
    the documented requestBody, the status is documented, and the answer conforms to the
    documented response (JSON schema, or problem+json). Returns the Response."""
    path_only = url.split("?", 1)[0]
    found = [(path, op) for (m, _), (path, op) in spec_operations(spec).items()
             if m == method and re.fullmatch(re.sub(r"\\\{[^}/]*\\\}", "[^/:]+",
                                                    re.escape(path)), path_only)]
    check_eq(len(found), 1, "operations matching %s %s" % (method, path_only))
    path, op = found[0]
    what = "%s %s" % (method, url)
    problems = []
    if body is not None:
        schema = resolve(spec, op["requestBody"])["content"]["application/json"]["schema"]
        conform(spec, schema, body, what + " request", problems)
    if method == "POST":
        r = c.post(url, body if body is not None else b"", key=key, headers=headers)
    else:
        r = c.get(url, headers=headers)
    if want is not None:
        check_status(r, want, what)
    documented = op["responses"].get(str(r.status))
    check(documented is not None, "%s: status %d is not documented (%s)" % (
        what, r.status, sorted(op["responses"])))
    content = resolve(spec, documented).get("content") or {}
    ctype = r.headers.get("content-type", "").split(";")[0]
    if r.status != 304:
        check(ctype in content, "%s: content type %r, documented %s" % (what, ctype,
                                                                       sorted(content)))
        if ctype.endswith("json"):
            conform(spec, content[ctype]["schema"], r.json, what, problems)
    for p in problems:
        print(p)
    check(not problems, "%s: %d difference(s) from openapi.yaml" % (what, len(problems)))
    return r


def test_answers_conform_to_the_schemas():
    """Drives every kind of route once (and some errors) and checks each answer against the
    schema openapi.yaml documents for it."""
    spec = load_spec()
    server = start_stockd(["--allow-reset"])
    n = [0]

    def ex(method, url, body=None, want=None, headers=None, key=True):
        n[0] += 1
        k = "oa-%d" % n[0] if key and method == "POST" else None
        return check_exchange(spec, c, method, url, body, k, want, headers)

    try:
        with server.client() as c:
            ex("POST", "/v1/stores", {"storeId": "S2", "name": "Two", "latencyMs": 5}, 201)
            ex("POST", "/v1/products", {"sku": "OA-1", "name": "One", "initialOnHand": 50,
                                        "storeId": "S1"}, 201)
            ex("POST", "/v1/products", {"sku": "OA-2", "name": "Two", "initialOnHand": 5}, 201)
            ex("POST", "/v1/products", {"sku": "OA-1", "name": "Again"}, 409)
            ex("POST", "/v1/purchase", {"sku": "OA-1", "qty": 2, "customerId": "c1"}, 201)
            ex("POST", "/v1/purchase", {"sku": "OA-1", "qty": 999, "customerId": "c1",
                                        "policy": "lowest-latency"}, 409)
            ex("POST", "/v1/purchase", {"sku": "OA-1", "qty": 1, "customerId": "c1"}, 428,
               key=False)
            ex("POST", "/v1/adjustments", {"storeId": "S2", "sku": "OA-1", "delta": 10,
                                           "reason": "in"}, 200)
            ex("POST", "/v1/adjustments", {"storeId": "S2", "sku": "OA-1", "delta": 1,
                                           "reason": "in"}, 409, headers={"If-Match": '"99"'})
            ex("POST", "/v1/items:set-absolute", {"storeId": "S1", "sku": "OA-1", "onHand": 40,
                                                  "countRef": "count-1"}, 200)
            res = ex("POST", "/v1/reservations", {"lines": [{"sku": "OA-1", "qty": 3}],
                                                  "ttlSeconds": 60, "customerId": "c2"}, 201)
            rid = res.json["reservationId"]
            ex("POST", "/v1/reservations/%s:confirm" % rid, {"paymentRef": "p-1"}, 200)
            ex("POST", "/v1/reservations/%s:cancel" % rid, {"reason": "late"}, 409)
            res2 = ex("POST", "/v1/reservations", {"storeId": "S1", "customerId": "c3",
                                                   "lines": [{"sku": "OA-1", "qty": 1}],
                                                   "ttlSeconds": 60}, 201)
            ex("POST", "/v1/reservations/%s:cancel" % res2.json["reservationId"],
               {"reason": "changed mind"}, 200)
            ex("POST", "/v1/reservations/res_999:confirm", {}, 404)
            ex("POST", "/v1/transfers", {"fromStore": "S1", "toStore": "S2",
                                         "lines": [{"sku": "OA-1", "qty": 4}]}, 201)
            ex("POST", "/v1/reconciliations", {"storeId": "S2", "source": "scan",
                                               "snapshotOnHand": {"OA-1": 12, "OA-2": 5}}, 200)
            ex("GET", "/v1/availability?sku=OA-1", want=200)
            r = ex("GET", "/v1/availability?sku=OA-1&storeId=S2", want=200)
            ex("GET", "/v1/availability?sku=OA-1&storeId=S2", want=304,
               headers={"If-None-Match": r.headers["etag"]})
            ex("GET", "/v1/availability?sku=NOPE", want=404)
            ex("GET", "/v1/availability", want=400)
            ex("GET", "/v1/items/OA-1/availability", want=200)
            ex("GET", "/v1/products/totals?q=oa&page=1&size=1", want=200)
            ex("GET", "/v1/stores", want=200)
            ex("GET", "/v1/reservations/" + rid, want=200)
            ex("GET", "/v1/reservations/res_999", want=404)
            ex("GET", "/v1/events?since=0&limit=5&storeId=S1", want=200)
            ex("GET", "/v1/idempotency/oa-5", want=200)
            ex("GET", "/v1/idempotency/never-used", want=404)
            ex("GET", "/v1/projections/status", want=200)
            ex("GET", "/v1/orders/ord_1", want=200)
            ex("GET", "/v1/orders/ord_999", want=404)
            ex("GET", "/v1/admin/audit", want=200)
            ex("POST", "/v1/admin/load-test", {"vus": 2, "iterations": 10, "sku": "OA-2"}, 200)
            ex("POST", "/admin/load-test", {"vus": 2, "iterations": 3, "productId": "OA-2"}, 200)
            ex("POST", "/v1/projections/rebuild", key=False, want=202)
            ex("GET", "/health", want=200)
            ex("GET", "/ready", want=200)
            ex("GET", "/metrics", want=200)
            ex("GET", "/", want=200)
            ex("GET", "/assets/dash.js", want=200)
            ex("GET", "/assets/nothing.js", want=404)
            ex("GET", "/inventory", want=404)
            ex("POST", "/reset", key=False, want=200)
            ex("GET", "/inventory", want=200)
            ex("POST", "/buy_ticket", {"customer_id": "u1"}, 200, key=False)
        with server.client(token=None) as c:
            ex("GET", "/v1/stores", want=401)
    finally:
        server.stop()


if __name__ == "__main__":
    main([
        test_every_route_is_documented_and_vice_versa,
        test_document_is_openapi_3_0,
        test_problem_codes_match_errors_h,
        test_served_byte_for_byte,
        test_every_operation_is_routed,
        test_answers_conform_to_the_schemas,
    ])
