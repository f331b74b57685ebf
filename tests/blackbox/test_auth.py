"""Black-box tests of bearer auth (DESIGN.md "HTTP API (v1)"): 401 without or with an unknown
token (with WWW-Authenticate: Bearer), 403 for a weaker role, the three token sources (tokens
file with plaintext and sha256: entries, STOCKD_TOKENS, the admin token generated on a first
start with mode 0600 that survives a restart), public routes without a token, the
--anonymous-role of token-less requests, and idempotency records per principal."""

import hashlib
import os
import stat
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (check, check_eq, check_problem, check_status, main,  # noqa: E402
                     new_key, start_stockd, stockd_bin, _temp_dirs)

SKU = "AUTH-1"
# Admin routes that may exist (issue 4); each one present must refuse a write token with 403.
ADMIN_POSTS = ["/v1/projections/rebuild", "/v1/dlt/replay", "/v1/admin/load-test"]


def write_tokens_file(data_dir, text):
    path = os.path.join(data_dir, "tokens.conf")
    with open(path, "w") as f:
        f.write(text)
    return path


def make_product(c, on_hand=100, sku=SKU):
    r = c.post("/v1/products", {"sku": sku, "name": "Auth", "initialOnHand": on_hand},
               key=new_key())
    check_status(r, 201, "create product")


def purchase(c, key, customer="c1", qty=1):
    return c.post("/v1/purchase", {"sku": SKU, "qty": qty, "customerId": customer}, key=key)


def check_401(r, what):
    check_problem(r, 401, "unauthorized", what)
    check_eq(r.headers.get("www-authenticate"), "Bearer", "%s: WWW-Authenticate" % what)


def test_missing_and_unknown_tokens():
    s = start_stockd()
    try:
        with s.client() as admin, s.client(token=None) as anon, \
                s.client(token="not-a-real-token") as wrong:
            make_product(admin)
            for name, c in (("no token", anon), ("wrong token", wrong)):
                check_401(c.get("/v1/availability?sku=" + SKU), "GET, " + name)
                check_401(purchase(c, new_key()), "POST, " + name)
            check_401(anon.get("/v1/availability?sku=" + SKU,
                               headers={"Authorization": "Basic YWRtaW46YWRtaW4="}),
                      "GET with a Basic header")
            check_401(anon.get("/v1/availability?sku=" + SKU,
                               headers={"Authorization": "Bearer " + s.token + "x"}),
                      "GET with the admin token plus a byte")
            r = anon.get("/v1/availability?sku=" + SKU,
                         headers={"Authorization": "bearer " + s.token})
            check_status(r, 200, "the scheme name is case-insensitive")
            r = admin.get("/v1/availability?sku=" + SKU)
            check_eq(r.json["onHand"], 100, "refused purchases sold nothing")
    finally:
        s.stop()


def test_roles_from_tokens_file():
    """A tokens file with plaintext and sha256: entries; read < write < admin."""
    s = start_stockd()
    data_dir = s.data_dir
    s.stop()
    reader_hash = hashlib.sha256(b"reader-secret").hexdigest()
    path = write_tokens_file(data_dir, "# roles\n\nreader read sha256:%s\n"
                             "writer write writer-secret\n"
                             "boss admin boss-secret   \n" % reader_hash)
    s = start_stockd(["--tokens-file", path], data_dir=data_dir)
    try:
        with s.client(token="reader-secret") as reader, \
                s.client(token="writer-secret") as writer, \
                s.client(token="boss-secret") as boss:
            make_product(writer)
            r = reader.get("/v1/availability?sku=" + SKU)
            check_status(r, 200, "read token on GET /v1/availability (sha256: entry)")
            check_eq(r.json["onHand"], 100, "onHand")
            body = check_problem(purchase(reader, new_key()), 403, "forbidden",
                                 "read token on POST /v1/purchase")
            check("write" in body.get("detail", ""), "403 detail names the role: %r" % body)
            check_status(purchase(writer, new_key()), 201, "write token on POST /v1/purchase")
            check_status(purchase(boss, new_key()), 201, "admin token on POST /v1/purchase")
            check_status(writer.get("/v1/orders/ord_1"), 200, "write token on a GET")
            check_401(s.client(token=s.token).get("/v1/availability?sku=" + SKU),
                      "the generated token is not read when --tokens-file is given")
            for path_ in ADMIN_POSTS:
                r = writer.post(path_, {}, key=new_key())
                if r.status in (404, 405):
                    print("note: %s does not exist yet; its 403 is not checked" % path_)
                    continue
                check_problem(r, 403, "forbidden", "write token on admin route " + path_)
    finally:
        s.stop()


def test_env_tokens():
    s = start_stockd(env={"STOCKD_TOKENS": "ci:write:ci-secret,viewer:read:sha256:%s"
                          % hashlib.sha256(b"view").hexdigest()})
    try:
        check(s.token is None, "no admin token is generated when STOCKD_TOKENS is set")
        check(not os.path.exists(os.path.join(s.data_dir, "admin.token")), "admin.token made")
        with s.client(token="ci-secret") as ci, s.client(token="view") as viewer:
            make_product(ci)
            check_status(purchase(ci, new_key()), 201, "STOCKD_TOKENS write token purchases")
            r = viewer.get("/v1/availability?sku=" + SKU)
            check_eq(r.json["onHand"], 99, "STOCKD_TOKENS read token reads")
            check_problem(purchase(viewer, new_key()), 403, "forbidden", "read token, POST")
    finally:
        s.stop()


def test_generated_admin_token_survives_restart():
    s = start_stockd()
    try:
        path = os.path.join(s.data_dir, "admin.token")
        check(s.token is not None and len(s.token) == 64, "admin.token holds 64 hex digits")
        mode = stat.S_IMODE(os.stat(path).st_mode)
        check_eq(oct(mode), oct(0o600), "admin.token mode")
        line = s.proc.stdout.readline().decode().strip()
        check_eq(line, "admin token written to %s/admin.token" % s.data_dir.rstrip("/"),
                 "second stdout line")
        with open(os.path.join(s.data_dir, "tokens")) as f:
            tokens_text = f.read()
        check(s.token not in tokens_text, "the tokens file holds the plaintext token")
        check("admin admin sha256:" + hashlib.sha256(s.token.encode()).hexdigest()
              in tokens_text, "the tokens file remembers the hash: %r" % tokens_text)
        with s.client() as c:
            make_product(c)
        token = s.token
        s.stop()
        s = start_stockd(data_dir=s.data_dir)
        check_eq(s.token, token, "admin.token after a restart")
        with s.client(token=token) as c:
            r = c.get("/v1/availability?sku=" + SKU)
            check_status(r, 200, "the first token after a restart")
            check_status(purchase(c, new_key()), 201, "purchase after a restart")
    finally:
        s.stop()


def test_public_routes():
    """Only the ops routes are public by default: a seed alias needs the role of its /v1
    route, so POST /buy_ticket without a token is a 401 (anyone could buy before)."""
    s = start_stockd(["--allow-reset"])
    try:
        with s.client(token=None) as anon, s.client() as admin:
            for path in ("/health", "/ready", "/metrics", "/"):
                r = anon.get(path)
                check(r.status == 200, "GET %s without a token: %d" % (path, r.status))
            r = anon.get("/openapi.yaml")
            check(r.status in (200, 404), "GET /openapi.yaml without a token: %d" % r.status)
            check_401(anon.post("/reset", b""), "POST /reset without a token")
            check_401(anon.post("/buy_ticket", {"customer_id": "u1"}), "buy_ticket, no token")
            check_401(anon.get("/inventory"), "GET /inventory without a token")
            check_401(anon.get("/v1/orders/ord_1"), "a v1 GET without a token")
            check_status(admin.post("/reset", b""), 200, "POST /reset with a token")
            check_status(admin.post("/buy_ticket", {"customer_id": "u1"}), 200,
                         "buy_ticket with a token")
            check_eq(admin.get("/inventory").json["current_stock"], 99, "tickets left")
    finally:
        s.stop()


def test_anonymous_role():
    """--anonymous-role read|write lends requests without a token that role (seed clients);
    a wrong token is still refused, admin routes always need a token, and the principal
    "public" (whose idempotency records the anonymous requests own) cannot be a token's."""
    tokens = {"STOCKD_TOKENS": "reader:read:reader-secret,boss:admin:boss-secret"}
    s = start_stockd(["--anonymous-role", "read"], env=tokens)
    try:
        with s.client(token="boss-secret") as boss, s.client(token=None) as anon:
            make_product(boss)
            r = anon.get("/v1/availability?sku=" + SKU)
            check_status(r, 200, "a token-less read with --anonymous-role read")
            check_eq(r.json["onHand"], 100, "onHand read without a token")
            r = purchase(anon, new_key())
            check_401(r, "a token-less purchase with --anonymous-role read")
            check("needs the write role" in r.json.get("detail", ""), "detail %r" % r.json)
            check_401(anon.post("/buy_ticket", {"customer_id": "u1"}), "buy_ticket, read role")
            check_401(anon.get("/v1/admin/audit"), "the audit without a token")
            check_401(s.client(token="wrong").get("/v1/availability?sku=" + SKU),
                      "a wrong token is never downgraded to the anonymous role")
    finally:
        s.stop()
    s = start_stockd(["--anonymous-role", "write", "--allow-reset"], env=tokens)
    try:
        with s.client(token="boss-secret") as boss, s.client(token=None) as anon, \
                s.client(token="reader-secret") as reader:
            make_product(boss)
            key = new_key("anon")
            first = purchase(anon, key)
            check_status(first, 201, "a token-less purchase with --anonymous-role write")
            again = purchase(anon, key)
            check_eq(again.body, first.body, "the anonymous replay")
            check_eq(again.headers.get("idempotent-replayed"), "true", "anonymous replayed")
            check_status(anon.post("/reset", b""), 200, "seed 004 reset without a token")
            check_status(anon.post("/buy_ticket", {"customer_id": "u1"}), 200,
                         "seed 004 buy_ticket without a token")
            check_eq(anon.get("/inventory").json["current_stock"], 99, "tickets left")
            check_problem(purchase(reader, new_key()), 403, "forbidden",
                          "a read token is weaker than the anonymous role, and stays read")
            check_401(anon.post("/v1/projections/rebuild", b""), "admin without a token")
    finally:
        s.stop()
    refusals = ((["--anonymous-role", "admin"], {}, "--anonymous-role takes none, read or write"),
                (["--anonymous-role", "x"], {}, "--anonymous-role takes none, read or write"),
                ([], {"STOCKD_TOKENS": "public:write:pub-secret"}, "is reserved for requests without"))
    for args, env, reason in refusals:
        data_dir = tempfile.mkdtemp(prefix="stockd-bb-refuse-")
        _temp_dirs.append(data_dir)
        child_env = {k: v for k, v in os.environ.items() if k != "STOCKD_TOKENS"}
        child_env.update(env)
        p = subprocess.run([stockd_bin(), "--listen", "127.0.0.1:0", "--data-dir", data_dir] +
                           args, env=child_env, stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=30)
        err = p.stderr.decode("utf-8", "replace")
        check(p.returncode != 0, "stockd started with %r %r" % (args, env))
        check(reason in err, "%r %r: the refusal does not say %r: %s" % (args, env, reason, err))


def test_idempotency_per_principal():
    """The same Idempotency-Key from two principals makes two independent records."""
    s = start_stockd(env={"STOCKD_TOKENS": "alice:write:alice-secret,bob:write:bob-secret"})
    try:
        with s.client(token="alice-secret") as alice, s.client(token="bob-secret") as bob:
            make_product(alice)
            key = new_key("shared")
            a1 = purchase(alice, key, "alice", 2)
            b1 = purchase(bob, key, "bob", 3)  # another body: no 422 across principals
            check_status(a1, 201, "alice's purchase")
            check_status(b1, 201, "bob's purchase with alice's key")
            check(a1.json["orderId"] != b1.json["orderId"], "two orders")
            a2 = purchase(alice, key, "alice", 2)
            check_eq(a2.body, a1.body, "alice's replay")
            check_eq(a2.headers.get("idempotent-replayed"), "true", "alice replayed")
            b2 = purchase(bob, key, "bob", 3)
            check_eq(b2.body, b1.body, "bob's replay")
            check_problem(purchase(alice, key, "alice", 5), 422, "idempotency_key_reused",
                          "alice reuses her key with another body")
            r = alice.get("/v1/availability?sku=" + SKU)
            check_eq(r.json["onHand"], 95, "onHand: 2 + 3 sold, replays sold nothing")
    finally:
        s.stop()


if __name__ == "__main__":
    main([test_missing_and_unknown_tokens, test_roles_from_tokens_file, test_env_tokens,
          test_generated_admin_token_survives_restart, test_public_routes,
          test_anonymous_role, test_idempotency_per_principal])
