/*
 * api_dash.c - the operator's dashboard (issue 13): GET / is web/index.html, and
 * GET /assets/{name} its script and style sheet (web/dash.js, web/dash.css). The three files
 * are compiled in by tools/embed.py (meson.build): nothing is read from disk or fetched from
 * elsewhere at run time. The page itself calls the API with the bearer token the operator types
 * in (kept in sessionStorage); these routes are public, like /metrics.
 */
#include <string.h>

#include "http/api.h"
#include "base/errors.h"
#include "base/svc_assert.h"

/* web/ at the repository root, embedded at build time by tools/embed.py: each file's bytes and
 * a terminating 0 that the length does not count. */
extern const char dash_index_html[];
extern const size_t dash_index_html_length;
extern const char dash_js[];
extern const size_t dash_js_length;
extern const char dash_css[];
extern const size_t dash_css_length;

/* Everything the page loads comes from this server: a script or style from anywhere else, an
 * inline script or a connection elsewhere is refused by the browser (and shows as a console
 * error, which the browser test fails on). */
static const char api_dash_csp[] = "default-src 'self'; img-src 'self' data:; base-uri 'none'; "
                                   "form-action 'none'; frame-ancestors 'none'";

struct api_dash_asset {
    const char *name; /* the {name} of /assets/{name} */
    const char *content_type;
    const char *bytes;
    const size_t *length;
};

static const struct api_dash_asset api_dash_assets[] = {
    {"dash.js", "text/javascript; charset=utf-8", dash_js, &dash_js_length},
    {"dash.css", "text/css; charset=utf-8", dash_css, &dash_css_length},
};

/* Sends an embedded file with the dashboard's headers. */
static void api_dash_send(struct http_request *r, const char *content_type, const char *bytes,
                          size_t length)
{
    SVC_ASSERT(length > 0 && bytes[length] == '\0');
    h2o_mem_pool_t *pool = &r->req->pool;
    h2o_headers_t *headers = &r->req->res.headers;
    /* h2o 2.2 has no token for these two names: added by string (lower case, as HTTP/2 wants). */
    h2o_add_header_by_str(pool, headers, H2O_STRLIT("content-security-policy"), 0, NULL,
                          api_dash_csp, sizeof api_dash_csp - 1);
    h2o_add_header_by_str(pool, headers, H2O_STRLIT("x-content-type-options"), 0, NULL,
                          H2O_STRLIT("nosniff"));
    /* Revalidate on each load: a new build serves new files under the same names. */
    h2o_add_header(pool, headers, H2O_TOKEN_CACHE_CONTROL, NULL, H2O_STRLIT("no-cache"));
    http_send(r, 200, content_type, bytes, length);
}

void api_home(struct http_request *r)
{
    api_dash_send(r, "text/html; charset=utf-8", dash_index_html, dash_index_html_length);
}

void api_dash_asset(struct http_request *r)
{
    h2o_iovec_t name = r->path_param;
    for (size_t i = 0; i < sizeof api_dash_assets / sizeof api_dash_assets[0]; i++) {
        const struct api_dash_asset *a = &api_dash_assets[i];
        if (h2o_memis(name.base, name.len, a->name, strlen(a->name))) {
            api_dash_send(r, a->content_type, a->bytes, *a->length);
            return;
        }
    }
    http_send_problem(r, SVC_ENOT_FOUND, "no such asset of the dashboard", NULL, 0);
}
