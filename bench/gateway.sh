#!/usr/bin/env bash
# Side-by-side benchmark of the edge on loopback, in one run:
#
#   direct:          wrk → app
#   nginx:           wrk ⇒ TLS ⇒ nginx             ⇒ mTLS ⇒ moatless sidecar → app
#   gateway:         wrk ⇒ TLS ⇒ moatless gateway  ⇒ mTLS ⇒ moatless sidecar → app
#   gateway-waf:     the same route with the WAF on (Core Rule Set, paranoia 1)
#   gateway-rl:      WAF off, one per-IP rate limit in memory
#   gateway-rl-redis WAF off, one per-IP rate limit in redis-server
#
# nginx and the gateway terminate the same client TLS (TLS 1.3, P-256
# certificate) and reach the same upstream sidecar over mutual TLS with the
# same client SVID, on pooled keep-alive connections; each runs one worker
# (nginx worker_processes 1, the gateway GOMAXPROCS=1). The app is an nginx
# answering "hello" (one worker). Every request is the issue's reference:
# POST of a 1 KB JSON order (43 fields), so the WAF has a body to inspect.
# The gateway logs each request as a JSON access-log line; nginx's access
# log is on too, so both write one line per request.
#
# Reported per setup: requests/s at 16 connections; p50/p99 latency at 1
# connection and what the setup adds over direct; CPU seconds per 1,000
# requests of the edge proxy (utime+stime from /proc during the
# 16-connection run) and, for Redis, of redis-server. The rate-limit
# check's cost is the difference between gateway-rl(-redis) and gateway.
#
# Usage: bench/gateway.sh [-d SECONDS] [-o results.md] [-p PROFILE-DIR] [-b BASE-BINARY] [-n] [-r ROUNDS] [-i]
# The gateways run with their defaults: HTTP/1.1 (wrk's) on the fast path.
# With -b, a second WAF-off gateway runs from BASE-BINARY (say, moatless
# built from main) beside the first, and after the table ROUNDS (default
# 6) rounds measure nginx, the gateway and the base gateway one after the
# other, CPU only: on a shared machine the load moves between runs
# minutes apart, within a round much less. Odd rounds run nginx, gateway,
# base; even rounds base, gateway, nginx. The gateway is always in the
# middle, next to both others, and every ratio's distance in time flips
# sign from one round to the next, so a load that rises or falls steadily
# through the rounds biases no ratio over a pair of rounds (with one
# fixed order it favours whichever setup runs first while the load
# rises). Each round's ratios come from its own three measurements
# (about 3 x (DUR+1) s apart at most); after the rounds come the medians
# (with their range) over all rounds and over each order separately: if
# the two orders' medians differ by more than their spread, the load
# drifted within the rounds and only the overall medians mean anything.
# Give an even ROUNDS.
# With -n, the base gateway (this build's, without -b) runs with
# disable_http1_fast_path: true: the rounds compare the fast path with
# net/http's server.
# With -p, CPU profiles of the WAF-off and WAF-on gateways during their
# 16-connection runs are written to PROFILE-DIR/gateway{,-waf}.prof
# (admin_pprof on a loopback admin port; read with go tool pprof).
# With -i, instructions per request instead of CPU time (valgrind's
# callgrind: the count does not move with the machine's load, which on a
# shared 2-core machine swings CPU time per request by ±15 % from one
# run to the next): only nginx (one process, master_process off), the
# gateway and the base gateway (-b or -n) run, each under callgrind with
# collection off; each in turn is warmed up, counted over one
# 4-connection run of DUR seconds (few connections and a long timeout: a
# request wrk gives up on is counted in instructions, not in requests,
# and its reconnection adds a handshake), and reported as instructions per
# request and as a ratio to nginx's, ROUNDS times in the alternating order
# of the CPU rounds. The Go processes run with GODEBUG=asyncpreemptoff=1
# (callgrind fails on the runtime's preemption signals). Instructions are
# not time (a cache miss or a system call's kernel side is not counted),
# so this is the measure of a change to the gateway's own code, the CPU
# rounds the measure of the target.
# Needs: go, openssl, nginx, redis-server, wrk (apt-get install nginx redis-server wrk),
# and valgrind for -i.
# Only 127.0.0.1 is used; everything started is stopped on exit.
set -euo pipefail

DUR=10
OUT=""
PROF=""
BASEBIN=""
ROUNDS=6
NETHTTP=""
INSTR=""
while getopts "d:o:p:b:r:nfi" opt; do
	case $opt in
	d) DUR=$OPTARG ;;
	o) OUT=$OPTARG ;;
	p) PROF=$(mkdir -p "$OPTARG" && cd "$OPTARG" && pwd) ;;
	b) BASEBIN=$(cd "$(dirname "$OPTARG")" && pwd)/$(basename "$OPTARG") ;;
	r) ROUNDS=$OPTARG ;;
	n) NETHTTP="disable_http1_fast_path: true" ;;
	i) INSTR=1 ;;
	f) echo "bench: -f is gone: the fast path is the gateway's default; -n runs the base gateway on net/http's server" >&2; exit 2 ;;
	*) echo "usage: $0 [-d SECONDS] [-o FILE] [-p PROFILE-DIR] [-b BASE-BINARY] [-n] [-r ROUNDS] [-i]" >&2; exit 2 ;;
	esac
done

for cmd in go openssl nginx redis-server wrk curl ${INSTR:+valgrind callgrind_control}; do
	command -v "$cmd" >/dev/null || { echo "bench: $cmd not found (apt-get install nginx redis-server wrk openssl curl${INSTR:+ valgrind})" >&2; exit 2; }
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=$(mktemp -d /tmp/moatless-gwbench.XXXXXX)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$W"
}
trap cleanup EXIT

# Ports: a block chosen from the PID so parallel runs do not collide,
# below the ephemeral range (32768 and up on Linux: a port there may be
# any outgoing connection's, and bind fails), skipping a block in which
# something already listens.
BASE=""
for i in $(seq 0 119); do
	b=$((20000 + (($$ + i) % 120) * 100))
	if ! ss -Htln 2>/dev/null | awk '{print $4}' | grep -Eq ":$((b / 100))[0-9]{2}\$"; then BASE=$b; break; fi
done
[ -n "$BASE" ] || { echo "bench: no free block of ports in 20000-31999" >&2; exit 2; }
APP=$BASE SC_IN=$((BASE + 1)) SC_ADM=$((BASE + 2)) NG=$((BASE + 3)) REDIS=$((BASE + 4))
GW=$((BASE + 10)) GW_WAF=$((BASE + 11)) GW_RL=$((BASE + 12)) GW_RLR=$((BASE + 13))
GW_ADM=$((BASE + 20)) GW_WAF_ADM=$((BASE + 21)) GW_BASE=$((BASE + 22))

echo "bench: building moatless" >&2
(cd "$ROOT" && CGO_ENABLED=0 go build -tags grpcnotrace -trimpath -o "$W/moatless" ./cmd/moatless)
BASENAME=${BASEBIN:+$(basename "$BASEBIN")}
if [ -n "$NETHTTP" ]; then
	BASEBIN=${BASEBIN:-$W/moatless}
	BASENAME="${BASENAME:-this build}, net/http"
fi

# --- PKI: one CA; the upstream's SVID, the edge's client SVID (used by
# nginx and the gateway alike), the public certificate for localhost. ---
cd "$W"
openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
openssl req -x509 -new -key ca.key -days 2 -subj "/O=bench/CN=bench CA" \
	-addext "basicConstraints=critical,CA:true" -addext "keyUsage=critical,keyCertSign,cRLSign" \
	-addext "subjectAltName=URI:spiffe://bench.test" -out ca.pem 2>/dev/null
leaf() { # name san
	openssl ecparam -name prime256v1 -genkey -noout -out "$1.ec" 2>/dev/null
	openssl pkcs8 -topk8 -nocrypt -in "$1.ec" -out "$1.key"
	openssl req -new -key "$1.key" -subj "/O=bench" -out "$1.csr" 2>/dev/null
	printf 'basicConstraints=critical,CA:false\nkeyUsage=critical,digitalSignature,keyAgreement\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=%s\n' "$2" > "$1.ext"
	openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile "$1.ext" -out "$1.pem" 2>/dev/null
}
leaf orders "URI:spiffe://bench.test/ns/prod/sa/orders,DNS:localhost,IP:127.0.0.1"
leaf edge "URI:spiffe://bench.test/ns/istio-system/sa/gateway"
leaf public "DNS:localhost,IP:127.0.0.1"

# The 1 KB JSON order of internal/gateway/waf's BenchmarkInspectJSON1K.
{
	printf '{"customer":{"id":"c-1029","name":"Ada Lovelace","email":"ada@example.com"},"items":['
	for _ in $(seq 9); do printf '{"sku":"BK-1001","title":"Notes on the Analytical Engine","qty":1,"price":19.99},'; done
	printf '{"sku":"BK-1002","title":"Sketch","qty":1,"price":9.5}],"note":"deliver after 5pm"}'
} > order.json
cat > post.lua <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"
wrk.headers["Accept"] = "application/json"
local f = io.open("$W/order.json"); wrk.body = f:read("*a"); f:close()
LUA

# --- the app: nginx answering "hello" ---
mkdir -p app ng
cat > app/nginx.conf <<CONF
worker_processes 1; daemon off; pid $W/app/pid; error_log $W/app/error.log warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; client_body_buffer_size 16k;
  server { listen 127.0.0.1:$APP; location / { return 200 "hello\n"; } } }
CONF

# --- nginx as the TLS reverse proxy, mTLS to the sidecar ---
cat > ng/nginx.conf <<CONF
worker_processes 1; daemon off; ${INSTR:+master_process off;} pid $W/ng/pid; error_log $W/ng/error.log warn;
events { worker_connections 4096; }
http { access_log $W/ng/access.log; keepalive_requests 1000000; client_body_buffer_size 16k;
  server_tokens off;
  upstream peer { server 127.0.0.1:$SC_IN; keepalive 64; }
  server {
    listen 127.0.0.1:$NG ssl http2;
    ssl_certificate $W/public.pem; ssl_certificate_key $W/public.key; ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      proxy_pass https://peer; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$remote_addr; proxy_set_header X-Forwarded-Proto https;
      proxy_ssl_certificate $W/edge.pem; proxy_ssl_certificate_key $W/edge.key;
      proxy_ssl_trusted_certificate $W/ca.pem; proxy_ssl_verify on; proxy_ssl_name localhost;
      proxy_ssl_protocols TLSv1.3; proxy_ssl_session_reuse on;
      add_header Strict-Transport-Security "max-age=31536000; includeSubDomains" always;
      add_header X-Content-Type-Options nosniff always;
    }
  } }
CONF

# --- the upstream sidecar: STRICT, only the edge's SVID, GET and POST ---
mkdir -p scpol gwpol
cat > scpol/p.yaml <<CONF
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: prod}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: orders, namespace: prod}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: ["bench.test/ns/istio-system/sa/gateway"]}}]
    to: [{operation: {methods: ["GET", "POST"]}}]
CONF
cat > sidecar.yaml <<CONF
identity: {files: {cert: $W/orders.pem, key: $W/orders.key, bundle: $W/ca.pem}}
namespace: prod
labels: {app: orders}
inbound: [{listen: "127.0.0.1:$SC_IN", app: "127.0.0.1:$APP"}]
policy: {files: [$W/scpol]}
admin: "127.0.0.1:$SC_ADM"
CONF

# --- the gateways: one per setup, the same route but for the feature ---
cat > gwpol/edge.yaml <<CONF
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: edge, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: ALLOW
  rules:
  - to: [{operation: {paths: ["/orders", "/orders/*"], methods: ["GET", "POST"]}}]
CONF
gateway() { # name port route-extra top-extra [admin-port]
	local admin='admin: "off"'
	if [ -n "$PROF" ] && [ -n "${5:-}" ]; then admin="admin: \"127.0.0.1:$5\"
admin_pprof: true"; fi
	cat > "$1.yaml" <<CONF
listen: "127.0.0.1:$2"
tls: {cert: $W/public.pem, key: $W/public.key}
identity: {files: {cert: $W/edge.pem, key: $W/edge.key, bundle: $W/ca.pem}}
$4
routes:
  - {name: orders, path_prefix: /orders, upstreams: ["127.0.0.1:$SC_IN"],
     spiffe_id: "spiffe://bench.test/ns/prod/sa/orders"$3}
policy: {files: [$W/gwpol]}
$admin
CONF
}
gateway gw "$GW" "" "" "$GW_ADM"
[ -n "$BASEBIN" ] && gateway gwbase "$GW_BASE" "" "$NETHTTP"
gateway gwwaf "$GW_WAF" ", waf: {enabled: true}" "" "$GW_WAF_ADM"
gateway gwrl "$GW_RL" ", rate_limits: [per-ip]" "rate_limits: [{name: per-ip, key: ip, limit: 1000000000, window: 1m}]"
gateway gwrlr "$GW_RLR" ", rate_limits: [per-ip]" "rate_limits: [{name: per-ip, key: ip, limit: 1000000000, window: 1m, store: \"redis://127.0.0.1:$REDIS/0\"}]"

startp() { # name cmd...
	"${@:2}" >"$W/$1.log" 2>&1 &
	PIDS+=($!)
	eval "PID_$1=$!"
}
# Under -i the measured proxies run under callgrind, collecting nothing
# until told; the other setups are not started.
VG=() GOVG=() GWS=(gw gwwaf gwrl gwrlr)
if [ -n "$INSTR" ]; then
	VG=(valgrind --tool=callgrind --instr-atstart=no "--callgrind-out-file=$W/cg.%p")
	GOVG=(GODEBUG=asyncpreemptoff=1)
	GWS=(gw)
fi
startp app nginx -c "$W/app/nginx.conf" -p "$W/app"
startp ng "${VG[@]}" nginx -c "$W/ng/nginx.conf" -p "$W/ng"
[ -z "$INSTR" ] && startp redis redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no --dir "$W"
startp sidecar env GOMAXPROCS=1 "$W/moatless" sidecar -config "$W/sidecar.yaml"
for g in "${GWS[@]}"; do
	startp "$g" env GOMAXPROCS=1 "${GOVG[@]}" "${VG[@]}" "$W/moatless" gateway -config "$W/$g.yaml"
done
[ -n "$BASEBIN" ] && startp gwbase env GOMAXPROCS=1 "${GOVG[@]}" "${VG[@]}" "$BASEBIN" gateway -config "$W/gwbase.yaml"

waitok() { # url
	for _ in $(seq 1 1200); do
		if [ "$(curl -sk -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' --data-binary @"$W/order.json" "$1")" = 200 ]; then return 0; fi
		sleep 0.05
	done
	echo "bench: $1 does not answer 200" >&2
	tail -n 5 "$W"/*.log >&2
	exit 1
}
waitok "http://127.0.0.1:$APP/orders"
if [ -n "$INSTR" ]; then
	for p in $NG $GW ${BASEBIN:+$GW_BASE}; do waitok "https://127.0.0.1:$p/orders"; done
else
	for p in $NG $GW $GW_WAF $GW_RL $GW_RLR ${BASEBIN:+$GW_BASE}; do waitok "https://127.0.0.1:$p/orders"; done
fi

# -i: instructions per request of nginx, the gateway and the base
# gateway, ROUNDS times in the alternating order of the CPU rounds.
if [ -n "$INSTR" ]; then
	ir() { # pid url → instructions per request over one 16-connection run
		local out n f
		wrk -t1 -c4 -d3s --timeout 30s -s "$W/post.lua" "$2" >/dev/null # warm up: pools, sessions, first faults
		callgrind_control -i on "$1" >/dev/null 2>&1
		callgrind_control -z "$1" >/dev/null 2>&1
		out=$(wrk -t1 -c4 -d"${DUR}s" --timeout 30s -s "$W/post.lua" "$2")
		callgrind_control -d "$1" >/dev/null 2>&1
		callgrind_control -i off "$1" >/dev/null 2>&1
		n=$(awk '/requests in/ {print $1}' <<<"$out")
		f=$(ls -t "$W"/cg."$1".* | head -1)
		awk -v n="$n" '/^totals:/ {printf "%.0f %d\n", $2 / n, n; exit}' "$f"
	}
	iratio() { if [ -n "$1" ] && [ -n "$2" ]; then awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a / b}'; else echo –; fi; }
	{
		echo "Instructions per request (callgrind), loopback, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at the start; ${DUR}s at 4 connections per measurement after a 3s warm-up; POST of a 1 KB JSON body; $(date -u +%Y-%m-%dT%H:%MZ)."
		echo
		echo "| round | order | nginx | gateway | base (${BASENAME:-none}) | gateway / nginx | base / nginx | gateway / base | requests counted (n / g / b) |"
		echo "|---:|---|---:|---:|---:|---:|---:|---:|---|"
		for r in $(seq "$ROUNDS"); do
			order=(ng gw gwbase)
			[ $((r % 2)) = 0 ] && order=(gwbase gw ng)
			declare -A I=() N=()
			for s in "${order[@]}"; do
				case $s in
				ng) read -r I[$s] N[$s] < <(ir "$PID_ng" "https://127.0.0.1:$NG/orders") ;;
				gw) read -r I[$s] N[$s] < <(ir "$PID_gw" "https://127.0.0.1:$GW/orders") ;;
				gwbase) [ -n "$BASEBIN" ] && read -r I[$s] N[$s] < <(ir "$PID_gwbase" "https://127.0.0.1:$GW_BASE/orders") ;;
				esac
			done
			echo "| $r | ${order[*]} | ${I[ng]} | ${I[gw]} | ${I[gwbase]:-–} | $(iratio "${I[gw]}" "${I[ng]}") | $(iratio "${I[gwbase]:-}" "${I[ng]}") | $(iratio "${I[gw]}" "${I[gwbase]:-}") | ${N[ng]} / ${N[gw]} / ${N[gwbase]:-–} |"
		done
	} | tee "${OUT:-/dev/null}"
	exit 0
fi

# nginx forks workers: measure the worker (the child of the master).
worker_of() { pgrep -P "$1" | head -1; }
WPID_ng=$(worker_of "$PID_ng")
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
to_ms() { # wrk latency like 512.00us / 1.20ms / 1.01s → ms
	awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}

declare -A RPS P50 P99 CPU CPU_R
measure() { # setup url pid [redis-pid] [admin-port]
	local name=$1 url=$2 pa=${3:-} pr=${4:-} adm=${5:-}
	local out reqs a0=0 r0=0 prof=""
	wrk -t1 -c16 -d2s -s "$W/post.lua" "$url" >/dev/null # warm up: pools, sessions
	[ -n "$pa" ] && a0=$(ticks "$pa")
	[ -n "$pr" ] && r0=$(ticks "$pr")
	if [ -n "$PROF" ] && [ -n "$adm" ]; then
		curl -s -o "$PROF/$name.prof" "http://127.0.0.1:$adm/debug/pprof/profile?seconds=$DUR" &
		prof=$!
	fi
	out=$(wrk -t2 -c16 -d"${DUR}s" -s "$W/post.lua" "$url")
	[ -n "$prof" ] && wait "$prof"
	RPS[$name]=$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
	reqs=$(awk '/requests in/ {print $1}' <<<"$out")
	if [ -n "$pa" ]; then
		CPU[$name]=$(awk -v t="$(( $(ticks "$pa") - a0 ))" -v hz="$HZ" -v n="$reqs" 'BEGIN {printf "%.4f", t / hz / (n / 1000)}')
	fi
	if [ -n "$pr" ]; then
		CPU_R[$name]=$(awk -v t="$(( $(ticks "$pr") - r0 ))" -v hz="$HZ" -v n="$reqs" 'BEGIN {printf "%.4f", t / hz / (n / 1000)}')
	fi
	out=$(wrk -t1 -c1 -d"${DUR}s" --latency -s "$W/post.lua" "$url")
	P50[$name]=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
	P99[$name]=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
	echo "bench: $name done" >&2
}

measure direct "http://127.0.0.1:$APP/orders"
measure nginx "https://127.0.0.1:$NG/orders" "$WPID_ng"
measure gateway "https://127.0.0.1:$GW/orders" "$PID_gw" "" "$GW_ADM"
measure gateway-waf "https://127.0.0.1:$GW_WAF/orders" "$PID_gwwaf" "" "$GW_WAF_ADM"
measure gateway-rl "https://127.0.0.1:$GW_RL/orders" "$PID_gwrl"
measure gateway-rl-redis "https://127.0.0.1:$GW_RLR/orders" "$PID_gwrlr" "$PID_redis"

add() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%+.3f", a - b}'; }
{
	echo "Loopback, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at the end; ${DUR}s per measurement; POST of a 1 KB JSON body; $(date -u +%Y-%m-%dT%H:%MZ)."
	echo
	echo "| setup | req/s @16 conns | p50 @1 conn (ms) | p99 @1 conn (ms) | added p50 (ms) | added p99 (ms) | edge CPU s / 1k req | redis-server CPU s / 1k req |"
	echo "|---|---:|---:|---:|---:|---:|---:|---:|"
	for s in direct nginx gateway gateway-waf gateway-rl gateway-rl-redis; do
		if [ "$s" = direct ]; then
			echo "| direct (app, plain HTTP) | ${RPS[$s]} | ${P50[$s]} | ${P99[$s]} | – | – | – | – |"
			continue
		fi
		echo "| $s | ${RPS[$s]} | ${P50[$s]} | ${P99[$s]} | $(add "${P50[$s]}" "${P50[direct]}") | $(add "${P99[$s]}" "${P99[direct]}") | ${CPU[$s]} | ${CPU_R[$s]:-–} |"
	done
	echo
	echo "gateway / nginx CPU per request: $(awk -v a="${CPU[gateway]}" -v b="${CPU[nginx]}" 'BEGIN {printf "%.2f", a / b}')×; WAF on adds $(add "${P50[gateway-waf]}" "${P50[gateway]}") ms at p50 and $(awk -v a="${CPU[gateway-waf]}" -v b="${CPU[gateway]}" 'BEGIN {printf "%.2f", (a - b)}') CPU s / 1k req; a rate-limit check costs $(awk -v a="${CPU[gateway-rl]}" -v b="${CPU[gateway]}" 'BEGIN {printf "%.4f", (a - b)}') CPU s / 1k req in memory, $(awk -v a="${CPU[gateway-rl-redis]}" -v b="${CPU[gateway]}" -v r="${CPU_R[gateway-rl-redis]}" 'BEGIN {printf "%.4f (gateway) + %.4f (redis-server)", (a - b), r}') with Redis."
} | tee "${OUT:-/dev/null}"

# -b: rounds of nginx, the gateway and the base gateway, CPU only, the
# order reversed every other round (see the header).
if [ -n "$BASEBIN" ]; then
	cpu1k() { # url pid → CPU s / 1k requests over one 16-connection run
		local a out n
		wrk -t1 -c16 -d1s -s "$W/post.lua" "$1" >/dev/null
		a=$(ticks "$2")
		out=$(wrk -t2 -c16 -d"${DUR}s" -s "$W/post.lua" "$1")
		n=$(awk '/requests in/ {print $1}' <<<"$out")
		awk -v t="$(( $(ticks "$2") - a ))" -v hz="$HZ" -v n="$n" 'BEGIN {printf "%.4f", t / hz / (n / 1000)}'
	}
	ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
	# median VALUES...: "median (min–max)" of the numbers given
	median() {
		printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {
			m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
			printf "%.2f (%.2f–%.2f)", m, v[1], v[NR]}'
	}
	GN=() BN=() GB=() GN_F=() GN_R=() GB_F=() GB_R=() LOADS=()
	{
		echo
		echo "Rounds, CPU s per 1,000 requests of each edge process; odd rounds measure nginx → gateway → base, even rounds base → gateway → nginx."
		echo
		echo "| round | order | nginx | gateway | base ($BASENAME) | gateway / nginx | base / nginx | gateway / base | load |"
		echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|"
		for r in $(seq "$ROUNDS"); do
			if [ $((r % 2)) = 1 ]; then
				order="n g b"
				n=$(cpu1k "https://127.0.0.1:$NG/orders" "$WPID_ng")
				g=$(cpu1k "https://127.0.0.1:$GW/orders" "$PID_gw")
				b=$(cpu1k "https://127.0.0.1:$GW_BASE/orders" "$PID_gwbase")
			else
				order="b g n"
				b=$(cpu1k "https://127.0.0.1:$GW_BASE/orders" "$PID_gwbase")
				g=$(cpu1k "https://127.0.0.1:$GW/orders" "$PID_gw")
				n=$(cpu1k "https://127.0.0.1:$NG/orders" "$WPID_ng")
			fi
			gn=$(ratio "$g" "$n") bn=$(ratio "$b" "$n") gb=$(ratio "$g" "$b") load=$(cut -d' ' -f1 /proc/loadavg)
			GN+=("$gn") BN+=("$bn") GB+=("$gb") LOADS+=("$load")
			if [ $((r % 2)) = 1 ]; then GN_F+=("$gn") GB_F+=("$gb"); else GN_R+=("$gn") GB_R+=("$gb"); fi
			echo "| $r | $order | $n | $g | $b | ${gn}× | ${bn}× | $gb | $load |"
		done
		echo
		echo "Medians over $ROUNDS rounds (range), load $(printf '%s\n' "${LOADS[@]}" | sort -g | awk 'NR == 1 {lo = $1} END {print lo "–" $1}'):"
		echo "gateway / nginx $(median "${GN[@]}"); base / nginx $(median "${BN[@]}"); gateway / base $(median "${GB[@]}"), under 1 in $(printf '%s\n' "${GB[@]}" | awk '$1 < 1' | wc -l) of $ROUNDS."
		if [ "${#GN_R[@]}" -gt 0 ]; then
			echo "By order: gateway / nginx $(median "${GN_F[@]}") when nginx ran first, $(median "${GN_R[@]}") when it ran last; gateway / base $(median "${GB_F[@]}") and $(median "${GB_R[@]}")."
		fi
	} | tee -a "${OUT:-/dev/null}"
fi
