/*
 * server.h - the HTTP server: the listening socket, the h2o evloop I/O threads with their
 * accept loop (which deals the connections round the threads in turn), the hand-off of every
 * request to the route table, and the writer's reply hook that returns a finished command to
 * the thread that sent it.
 *
 * main includes this file, and /metrics (api_metrics.c) for http_accept_pauses and
 * http_thread_connections. It is not what handlers use (request.h) and not the route table
 * (routes.h); the arrows are server -> routes -> api_* -> request and server -> request.
 * Read thread.h next.
 */
#ifndef STOCKD_HTTP_SERVER_H
#define STOCKD_HTTP_SERVER_H

#include "core/command.h"
#include "http/app.h"

/* Binds the listening socket on host (an IPv4 address) and port (0: any free port); *port_out
 * gets the port. Returns the socket, or -errno (-EINVAL for a bad host). Called by main before
 * http_start. */
int http_listen(const char *host, int port, int *port_out);

/* Starts count (1..IO_THREADS_MAX) I/O threads serving listen_fd and returns once every one
 * accepts. app is borrowed for the life of the process and must be fully set up (writer,
 * projector, auth) and immutable from here on. 0 or -errno; a thread that fails to set itself
 * up (memory, its store reader) exits the process with a logged reason. */
int http_start(struct app *app, int listen_fd, int count);

/* Adds every I/O thread's request counters and latency histograms into sum (zeroed by the
 * caller), for /metrics; any thread may call it. */
struct http_metrics_sum;
void http_threads_metrics(struct http_metrics_sum *sum);

/* The connections each I/O thread served since start, out[0..count), for /metrics; capacity
 * is out's length (IO_THREADS_MAX). Returns count, the number of threads. */
int http_thread_connections(uint64_t *out, int capacity);

/* How many times an I/O thread paused accepting for want of file descriptors (/metrics). */
uint64_t http_accept_pauses(void);

/* The writer's reply hook (writer_config.reply, with any reply_context): gathers cmd for its
 * owning I/O thread until http_writer_replies_flush hands the batch's replies over. Called on
 * the writer thread; never blocks. */
void http_writer_reply(struct command *cmd, void *context);

/* The writer's hook after a batch's last reply: sends the replies http_writer_reply gathered,
 * one message per I/O thread. On the writer thread. */
void http_writer_replies_flush(void *context);

#endif
