/*
 * errors.h - the one table of operating errors stockd returns.
 *
 * Functions return 0 or a negative enum svc_err (syscall failures are -errno). The X-macro
 * below generates the enum, the stable client code, the problem+json title and the HTTP
 * status, so a code can never be mapped twice (libuv UV_ERRNO_MAP). Programmer errors are not
 * here: they are assertions. Read log.h next.
 */
#ifndef STOCKD_ERRORS_H
#define STOCKD_ERRORS_H

/* X(name, http_status, code, title) */
#define SVC_ERR_MAP(X)                                                                    \
    X(INVALID_JSON, 400, "invalid_json", "Malformed JSON body")                           \
    X(VALIDATION, 400, "validation_failed", "Invalid request")                            \
    X(BAD_FRAMING, 400, "bad_framing", "Malformed message framing")                       \
    X(UNAUTHORIZED, 401, "unauthorized", "Missing or unknown bearer token")               \
    X(FORBIDDEN, 403, "forbidden", "The token's role does not allow this")                \
    X(FORBIDDEN_RESET, 403, "reset_disabled", "Reset is disabled")                        \
    X(NOT_FOUND, 404, "not_found", "Not found")                                           \
    X(UNKNOWN_SKU, 404, "unknown_sku", "Unknown SKU")                                     \
    X(UNKNOWN_STORE, 404, "unknown_store", "Unknown store")                               \
    X(UNKNOWN_ORDER, 404, "unknown_order", "Unknown order")                               \
    X(UNKNOWN_RESERVATION, 404, "unknown_reservation", "Unknown reservation")             \
    X(METHOD_NOT_ALLOWED, 405, "method_not_allowed", "Method not allowed")                \
    X(INSUFFICIENT_STOCK, 409, "insufficient_stock", "Insufficient stock")                \
    X(STORE_EXISTS, 409, "store_exists", "Store already exists")                          \
    X(PRODUCT_EXISTS, 409, "product_exists", "Product already exists")                    \
    X(VERSION_CONFLICT, 409, "version_conflict", "Version conflict")                      \
    X(RESERVATION_EXPIRED, 409, "reservation_expired", "Reservation expired")             \
    X(RESERVATION_NOT_ACTIVE, 409, "reservation_not_active", "Reservation not active")    \
    X(BODY_TOO_LARGE, 413, "body_too_large", "Request body too large")                    \
    X(UNSUPPORTED_MEDIA_TYPE, 415, "unsupported_media_type", "Content-Type must be JSON") \
    X(IDEM_KEY_REUSED, 422, "idempotency_key_reused", "Idempotency key reused")           \
    X(IDEM_KEY_REQUIRED, 428, "idempotency_key_required", "Idempotency-Key required")     \
    X(QUEUE_FULL, 429, "queue_full", "Too many requests in flight")                       \
    X(STORAGE_UNAVAILABLE, 503, "storage_unavailable", "Storage unavailable")             \
    X(SHUTTING_DOWN, 503, "shutting_down", "Shutting down")                               \
    X(CAPACITY, 507, "capacity_exceeded", "Capacity exceeded")                            \
    X(OUT_OF_MEMORY, 503, "out_of_memory", "Out of memory")                               \
    X(TOO_MANY_SUBSCRIBERS, 503, "too_many_subscribers", "Too many stream subscribers")   \
    X(AUDIT_RUNNING, 409, "audit_running", "An audit is already running")                 \
    X(LOAD_TEST_RUNNING, 409, "load_test_running", "A load test is already running")      \
    X(LOAD_TEST_LIMIT, 400, "load_test_out_of_range", "Load test parameter out of range") \
    X(ORDER_NOT_CANCELLABLE, 409, "order_not_cancellable", "Order cannot be cancelled")   \
    X(READ_ONLY, 503, "read_only", "Read-only mode: writes are refused")                  \
    X(BROKER_UNAVAILABLE, 503, "broker_unavailable", "Message broker unavailable")

enum svc_err_index {
#define SVC_ERR_INDEX_(name, status, code, title) SVC_ERR_INDEX_##name,
    SVC_ERR_MAP(SVC_ERR_INDEX_)
#undef SVC_ERR_INDEX_
        SVC_ERR_INDEX_COUNT
};

/* Kept away from errno values so that -errno and svc errors never collide. */
#define SVC_ERR_BASE 10000

enum svc_err {
    SVC_OK = 0,
#define SVC_ERR_ENUM_(name, status, code, title) \
    SVC_E##name = -(SVC_ERR_BASE + SVC_ERR_INDEX_##name),
    SVC_ERR_MAP(SVC_ERR_ENUM_)
#undef SVC_ERR_ENUM_
};

/* True when err is one of the codes above (not 0, not -errno). */
int svc_err_is_known(int err);
/* The stable machine code sent as problem+json "code"; "internal" for unknown values. */
const char *svc_err_name(int err);
/* The short human title sent as problem+json "title". */
const char *svc_err_message(int err);
/* The HTTP status for err; 500 only for values outside the table (a programmer error). */
int svc_err_http_status(int err);

#endif
