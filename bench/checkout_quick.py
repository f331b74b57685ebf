"""A quick measurement of checkout orders from POST to PAID (issue 11, step 1; the real
bench/checkout comes later): starts stockd on SQLite with the payment simulator at
--payment-latency-ms (default 0), posts N single-unit orders from T keep-alive connections,
and reports orders/s of the POSTs and from the first POST until every order is PAID (the
stock's onHand has dropped by N with nothing held). The client is Python: on a small machine it
may be the bottleneck of the POST rate; the PAID rate is then bounded by it too.

usage: python3 bench/checkout_quick.py [N] [T] [LATENCY_MS]   (STOCKD_BIN: the binary)"""

import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 16000  # <= RESERVATIONS_ACTIVE_MAX: the
# workers-only run holds them all at once
T = int(sys.argv[2]) if len(sys.argv) > 2 else 8
LATENCY = sys.argv[3] if len(sys.argv) > 3 else "0"
BIN = os.environ.get("STOCKD_BIN", "build/stockd")

data = tempfile.mkdtemp(prefix="checkout-bench-")
proc = subprocess.Popen([BIN, "--listen", "127.0.0.1:0", "--data-dir", data,
                         "--anonymous-role", "write", "--payment-latency-ms", LATENCY,
                         "--log-level", "warn"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
line = proc.stdout.readline().decode()
port = int(line.split("127.0.0.1:")[1].split(" ")[0])
H = {"Content-Type": "application/json"}


def post(c, path, body, key):
    c.request("POST", path, json.dumps(body), dict(H, **{"Idempotency-Key": key}))
    r = c.getresponse()
    return r.status, r.read()


def on_hand(c):
    c.request("GET", "/v1/availability?sku=B&storeId=S1")
    r = c.getresponse()
    j = json.loads(r.read())
    return j["onHand"], j["reserved"]


c0 = http.client.HTTPConnection("127.0.0.1", port)
post(c0, "/v1/products", {"sku": "B", "name": "b", "initialOnHand": N}, "p")
failures = []


def worker(t):
    c = http.client.HTTPConnection("127.0.0.1", port)
    for i in range(t, N, T):
        status, body = post(c, "/v1/orders", {"customerId": "c%d" % (i % 100),
                                              "lines": [{"sku": "B", "qty": 1}]}, "o%d" % i)
        if status != 201:
            failures.append((status, body))


start = time.monotonic()
threads = [threading.Thread(target=worker, args=(t,)) for t in range(T)]
for t in threads:
    t.start()
for t in threads:
    t.join()
posted = time.monotonic()
while on_hand(http.client.HTTPConnection("127.0.0.1", port)) != (0, 0):
    if proc.poll() is not None:
        sys.exit("stockd exited (%s)" % proc.returncode)
    time.sleep(0.01)
paid = time.monotonic()
print(json.dumps({"orders": N, "connections": T, "latencyMs": int(LATENCY),
                  "failures": len(failures),
                  "postPerSec": round(N / (posted - start)),
                  "paidPerSec": round(N / (paid - start)),
                  "lastPaidAfterPostsMs": round((paid - posted) * 1000)}))
proc.terminate()
proc.wait()

# The workers' own rate, without the client in the way: the same N orders made again with the
# workers off, then stockd restarted with them on; from the restart's listening line until
# every order is PAID.
data2 = tempfile.mkdtemp(prefix="checkout-bench-")
args = [BIN, "--listen", "127.0.0.1:0", "--data-dir", data2, "--anonymous-role", "write",
        "--payment-latency-ms", LATENCY, "--log-level", "warn"]
proc = subprocess.Popen(args + ["--workers", "off"], stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL)
port = int(proc.stdout.readline().decode().split("127.0.0.1:")[1].split(" ")[0])
post(http.client.HTTPConnection("127.0.0.1", port), "/v1/products",
     {"sku": "B", "name": "b", "initialOnHand": N}, "p")
threads = [threading.Thread(target=worker, args=(t,)) for t in range(T)]
for t in threads:
    t.start()
for t in threads:
    t.join()
proc.terminate()
proc.wait()
start = time.monotonic()
proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
port = int(proc.stdout.readline().decode().split("127.0.0.1:")[1].split(" ")[0])
while on_hand(http.client.HTTPConnection("127.0.0.1", port)) != (0, 0):
    time.sleep(0.005)
paid = time.monotonic()
print(json.dumps({"workersOnly": True, "orders": N, "latencyMs": int(LATENCY),
                  "paidPerSec": round(N / (paid - start))}))
proc.terminate()
proc.wait()
