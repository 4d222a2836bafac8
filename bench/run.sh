#!/usr/bin/env bash
# Side-by-side benchmark of mTLS proxy pairs on loopback, in one run:
#
#   direct:   wrk → app
#   moatless: wrk → moatless-sidecar (outbound) ⇒ mTLS ⇒ moatless-sidecar (inbound) → app
#   nginx:    wrk → nginx ⇒ mTLS ⇒ nginx → app
#   haproxy:  wrk → haproxy ⇒ mTLS ⇒ haproxy → app
#
# Every pair uses the same P-256 certificates (X509-SVIDs with SPIFFE URI
# SANs from one CA), verifies the peer's certificate both ways over TLS
# 1.3, keeps pooled keep-alive connections between the proxies and to the
# app, and runs one worker each (nginx worker_processes 1, HAProxy
# nbthread 1, the sidecar GOMAXPROCS=1). The app is an nginx answering
# "hello" (one worker). The moatless pair also enforces STRICT mTLS and an
# AuthorizationPolicy with principals, methods and paths on every
# request, sets x-forwarded-client-cert, counts every decision in its
# metrics and logs 1% of allows (decision_log.allow_sample_rate 0.01). It
# runs three times: with HTTP/1.1 between the sidecars (the fast path)
# keeping its startup pages (keep_startup_pages: true, the memory of the
# process as it is); the same releasing them once serving (the default
# configuration); and with disable_http1_fast_path (net/http's server and
# client only, keeping its pages); -2 adds a pair with HTTP/2 between the
# sidecars. The sidecars run from moatless-sidecar, the data-plane
# executable (built as shipped: it links no OPA); -f runs them
# from the one binary (moatless sidecar) instead.
#
# Reported per setup: requests/s at 32 connections; p50/p99 latency at 1
# connection and what the pair adds over direct; CPU seconds per 1,000
# requests and context switches per request for each proxy of the pair
# (utime+stime from /proc/PID/stat, voluntary and involuntary switches of
# every thread from /proc/PID/task/*/status, over the 32-connection run);
# RSS, private RSS and PSS at about 1,000 requests/s and RSS after the
# 32-connection run. (Not VmHWM: the peak is the start, not the load.)
# PSS shares each page of a file among every process mapping it: the
# sidecars share their executable (six processes, one per sidecar), nginx
# and HAProxy theirs and the system's libssl and libcrypto.
#
# -i counts instructions instead (valgrind's callgrind, repeatable on a
# loaded machine where CPU time is not): each proxy runs under callgrind
# with collection off, is warmed up, then collects over a wrk run at 8
# connections; reported is instructions per request for each proxy of
# the pair. (Go sidecars run with GODEBUG=asyncpreemptoff=1, without
# which callgrind fails on the runtime's preemption signals; nginx with
# master_process off.)
#
# -m measures only the memory at about 1,000 requests/s (every setup, in
# rotated order under -r), not CPU, throughput or latency.
#
# SIDECAR_VARIANTS="/path/a /path/b" adds a pair per executable named
# (built by hand, e.g. with other build tags), keeping its startup pages,
# labelled by its file name: what leaving code out saves, measured in
# the same run as the rest. Each variant's two processes share only their
# own executable, so compare their PSS with a variant built from the
# same code as $EXE, not with the six processes sharing $EXE.
#
# -k sets everything up, prints each setup's port and proxy PIDs, and
# keeps it running until interrupted: for strace, perf or pprof by hand.
#
# Usage: bench/run.sh [-d SECONDS] [-o results.md] [-r ROUNDS] [-i] [-2] [-f] [-m] [-k]
# Needs: go, openssl, nginx, haproxy, wrk (apt-get install nginx haproxy
# wrk), and valgrind for -i. Only 127.0.0.1 is used; everything started
# is stopped on exit.
set -euo pipefail

DUR=10
OUT=""
INSTR=""
H2=""
KEEP=""
FULL=""
MEMONLY=""
ROUNDS=1
while getopts "d:o:r:i2fmk" opt; do
	case $opt in
	d) DUR=$OPTARG ;;
	o) OUT=$OPTARG ;;
	i) INSTR=1 ;;
	2) H2=1 ;;
	f) FULL=1 ;;
	m) MEMONLY=1 ;;
	r) ROUNDS=$OPTARG ;;
	k) KEEP=1 ;;
	*) echo "usage: $0 [-d SECONDS] [-o FILE] [-r ROUNDS] [-i] [-2] [-f] [-m] [-k]" >&2; exit 2 ;;
	esac
done

for cmd in go openssl nginx haproxy wrk ${INSTR:+valgrind callgrind_control}; do
	command -v "$cmd" >/dev/null || { echo "bench: $cmd not found (apt-get install nginx haproxy wrk openssl valgrind)" >&2; exit 2; }
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=$(mktemp -d /tmp/moatless-bench.XXXXXX)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$W"
}
trap cleanup EXIT

# Ports: a block of 100 chosen from the PID so parallel runs do not
# collide, below the kernel's ephemeral range (32768–60999 by default):
# a block inside it collides with the source port of some other
# connection on a busy host, and a listener then fails with "address
# already in use".
EPH=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
BLOCKS=$(((EPH - 20000) / 100 - 1))
[ "$BLOCKS" -ge 10 ] || BLOCKS=400
BASE=$((20000 + ($$ % BLOCKS) * 100))
APP=$BASE
MO_IN=$((BASE + 1)) MO_OUT=$((BASE + 2)) MO_ADM1=$((BASE + 3)) MO_ADM2=$((BASE + 4))
MO_IN0=$((BASE + 5)) MO_OUT0=$((BASE + 6)) MO_ADM3=$((BASE + 7)) MO_ADM4=$((BASE + 8))
MO_OUT2=$((BASE + 9)) MO_ADM5=$((BASE + 10))
MO_INR=$((BASE + 13)) MO_OUTR=$((BASE + 14)) MO_ADM6=$((BASE + 15)) MO_ADM7=$((BASE + 16))
NG_IN=$((BASE + 11)) NG_OUT=$((BASE + 12))
HA_IN=$((BASE + 21)) HA_OUT=$((BASE + 22))

# The sidecars' executable: moatless-sidecar, or the one binary under -f.
EXE=moatless-sidecar SC=("$W/moatless-sidecar")
[ -n "$FULL" ] && EXE=moatless SC=("$W/moatless" sidecar)
echo "bench: building $EXE" >&2
# As shipped (Makefile): moatless-sidecar links no OPA by what it imports.
(cd "$ROOT" && CGO_ENABLED=0 go build -tags grpcnotrace -trimpath -o "$W/$EXE.built" "./cmd/$EXE")
# The executable is copied past the page cache (O_DIRECT), so that its pages
# are cached as an installed binary's are, by the reads of running it: the
# linker's buffered writes leave it cached in large folios, and the
# sidecars' RSS then counts about 10 MB more of the same file (the same
# bytes: "moatless version" peaked at 48 MB run from the linker's output
# and at 37 MB from a copy written with O_DIRECT, 2026-12-06). nginx and
# HAProxy run from installed executables. Where O_DIRECT is refused
# (tmpfs), the linker's output is used.
dd if="$W/$EXE.built" of="$W/$EXE" bs=1M oflag=direct status=none 2>/dev/null || cp "$W/$EXE.built" "$W/$EXE"
chmod +x "$W/$EXE"
rm -f "$W/$EXE.built"

# --- PKI: one CA, a server SVID (orders) and a client SVID (frontend). ---
cd "$W"
openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
openssl req -x509 -new -key ca.key -days 2 -subj "/O=bench/CN=bench CA" \
	-addext "basicConstraints=critical,CA:true" -addext "keyUsage=critical,keyCertSign,cRLSign" \
	-addext "subjectAltName=URI:spiffe://bench.test" -out ca.pem 2>/dev/null
leaf() { # name spiffe-id
	openssl ecparam -name prime256v1 -genkey -noout -out "$1.ec" 2>/dev/null
	openssl pkcs8 -topk8 -nocrypt -in "$1.ec" -out "$1.key"
	openssl req -new -key "$1.key" -subj "/O=bench" -out "$1.csr" 2>/dev/null
	printf 'basicConstraints=critical,CA:false\nkeyUsage=critical,digitalSignature,keyAgreement\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=URI:%s,DNS:localhost,IP:127.0.0.1\n' "$2" > "$1.ext"
	openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile "$1.ext" -out "$1.pem" 2>/dev/null
	cat "$1.pem" "$1.key" > "$1.bundle.pem" # HAProxy wants cert+key in one file
}
leaf server spiffe://bench.test/ns/prod/sa/orders
leaf client spiffe://bench.test/ns/prod/sa/frontend

# --- the app: nginx answering "hello" ---
mkdir -p app ngin ngout
cat > app/nginx.conf <<CONF
worker_processes 1; daemon off; pid $W/app/pid; error_log $W/app/error.log warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$APP; location / { return 200 "hello\n"; } } }
CONF

# --- nginx pair (under callgrind: one process, no master) ---
NGX_SINGLE=""
[ -n "$INSTR" ] && NGX_SINGLE="master_process off;"
cat > ngin/nginx.conf <<CONF
worker_processes 1; daemon off; ${NGX_SINGLE:-} pid $W/ngin/pid; error_log $W/ngin/error.log warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$APP; keepalive 64; }
  server {
    listen 127.0.0.1:$NG_IN ssl http2;
    ssl_certificate $W/server.pem; ssl_certificate_key $W/server.key;
    ssl_client_certificate $W/ca.pem; ssl_verify_client on; ssl_protocols TLSv1.3;
    ssl_session_cache shared:S:1m;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  } }
CONF
cat > ngout/nginx.conf <<CONF
worker_processes 1; daemon off; ${NGX_SINGLE:-} pid $W/ngout/pid; error_log $W/ngout/error.log warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream peer { server 127.0.0.1:$NG_IN; keepalive 64; }
  server {
    listen 127.0.0.1:$NG_OUT;
    location / {
      proxy_pass https://peer; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_ssl_certificate $W/client.pem; proxy_ssl_certificate_key $W/client.key;
      proxy_ssl_trusted_certificate $W/ca.pem; proxy_ssl_verify on; proxy_ssl_name localhost;
      proxy_ssl_protocols TLSv1.3; proxy_ssl_session_reuse on;
    }
  } }
CONF

# --- HAProxy pair ---
cat > hain.cfg <<CONF
global
  nbthread 1
  maxconn 4096
  tune.ssl.default-dh-param 2048
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always
frontend in
  bind 127.0.0.1:$HA_IN ssl crt $W/server.bundle.pem ca-file $W/ca.pem verify required alpn h2,http/1.1 ssl-min-ver TLSv1.3
  default_backend app
backend app
  server app 127.0.0.1:$APP
CONF
cat > haout.cfg <<CONF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always
frontend out
  bind 127.0.0.1:$HA_OUT
  default_backend peer
backend peer
  server peer 127.0.0.1:$HA_IN ssl crt $W/client.bundle.pem ca-file $W/ca.pem verify required verifyhost localhost ssl-min-ver TLSv1.3
CONF

# --- moatless pairs (files mode, STRICT, an ALLOW policy with principals, methods and paths) ---
mkdir -p pol
cat > pol/p.yaml <<CONF
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
  - from: [{source: {principals: ["bench.test/ns/prod/sa/frontend"]}}]
    to: [{operation: {methods: ["GET", "HEAD"], paths: ["/", "/api/*"]}}]
CONF
inbound_conf() { # listen admin extra
	cat <<CONF
identity: {files: {cert: $W/server.pem, key: $W/server.key, bundle: $W/ca.pem}}
namespace: prod
labels: {app: orders}
inbound: [{listen: "127.0.0.1:$1", app: "127.0.0.1:$APP"}]
policy: {files: [$W/pol]}
decision_log: {allow_sample_rate: 0.01}
admin: "127.0.0.1:$2"
$3
CONF
}
outbound_conf() { # listen upstream admin outbound-extra extra
	cat <<CONF
identity: {files: {cert: $W/client.pem, key: $W/client.key, bundle: $W/ca.pem}}
outbound: [{listen: "127.0.0.1:$1", upstream: "127.0.0.1:$2", spiffe_id: "spiffe://bench.test/ns/prod/sa/orders"$4}]
admin: "127.0.0.1:$3"
$5
CONF
}
inbound_conf "$MO_IN" "$MO_ADM1" "" > moin.yaml
outbound_conf "$MO_OUT" "$MO_IN" "$MO_ADM2" "" "" > moout.yaml
inbound_conf "$MO_IN0" "$MO_ADM3" "disable_http1_fast_path: true" > moin0.yaml
outbound_conf "$MO_OUT0" "$MO_IN0" "$MO_ADM4" "" "disable_http1_fast_path: true" > moout0.yaml
outbound_conf "$MO_OUT2" "$MO_IN" "$MO_ADM5" ", upstream_http2: true" "" > moout2.yaml
# Every pair keeps its startup pages but the one that shows the release.
for f in moin.yaml moout.yaml moin0.yaml moout0.yaml moout2.yaml; do echo "keep_startup_pages: true" >> "$f"; done
inbound_conf "$MO_INR" "$MO_ADM6" "" > moinr.yaml
outbound_conf "$MO_OUTR" "$MO_INR" "$MO_ADM7" "" "" > mooutr.yaml

# Under -i every proxy runs under callgrind, collecting nothing until told.
VG=()
GOVG=""
if [ -n "$INSTR" ]; then
	VG=(valgrind --tool=callgrind --instr-atstart=no "--callgrind-out-file=$W/cg.%p")
	GOVG="GODEBUG=asyncpreemptoff=1"
fi
startp() { # name cmd...
	"${@:2}" >"$W/$1.log" 2>&1 &
	PIDS+=($!)
	eval "PID_$1=$!"
}
startp app nginx -c "$W/app/nginx.conf" -p "$W/app"
startp ngin "${VG[@]}" nginx -c "$W/ngin/nginx.conf" -p "$W/ngin"
startp ngout "${VG[@]}" nginx -c "$W/ngout/nginx.conf" -p "$W/ngout"
startp hain "${VG[@]}" haproxy -db -f "$W/hain.cfg"
startp haout "${VG[@]}" haproxy -db -f "$W/haout.cfg"
# SIDECAR_ENV adds environment to the sidecars, e.g. SIDECAR_ENV="GOGC=200".
sidecar() { # name config
	startp "$1" env GOMAXPROCS=1 $GOVG ${SIDECAR_ENV:-} "${VG[@]}" "${SC[@]}" -config "$W/$2"
}
sidecar moin moin.yaml
sidecar moout moout.yaml
sidecar moin0 moin0.yaml
sidecar moout0 moout0.yaml
sidecar moinr moinr.yaml
sidecar mooutr mooutr.yaml
[ -n "$H2" ] && sidecar moout2 moout2.yaml
VARIANTS=()
declare -A VNAME VPORT VPID_A VPID_B
vi=0
for v in ${SIDECAR_VARIANTS:-}; do
	vi=$((vi + 1))
	vin=$((BASE + 30 + 4 * vi)) vout=$((BASE + 31 + 4 * vi))
	dd if="$v" of="$W/variant$vi" bs=1M oflag=direct status=none 2>/dev/null || cp "$v" "$W/variant$vi"
	chmod +x "$W/variant$vi"
	inbound_conf "$vin" $((BASE + 32 + 4 * vi)) "keep_startup_pages: true" > "vin$vi.yaml"
	outbound_conf "$vout" "$vin" $((BASE + 33 + 4 * vi)) "" "keep_startup_pages: true" > "vout$vi.yaml"
	startp vin env GOMAXPROCS=1 $GOVG ${SIDECAR_ENV:-} "${VG[@]}" "$W/variant$vi" -config "$W/vin$vi.yaml"
	VPID_B[variant$vi]=$PID_vin
	startp vout env GOMAXPROCS=1 $GOVG ${SIDECAR_ENV:-} "${VG[@]}" "$W/variant$vi" -config "$W/vout$vi.yaml"
	VPID_A[variant$vi]=$PID_vout
	VARIANTS+=("variant$vi")
	VNAME[variant$vi]=$(basename "$v")
	VPORT[variant$vi]=$vout
done

waitport() {
	for _ in $(seq 1 1200); do
		if curl -s -o /dev/null "http://127.0.0.1:$1/"; then return 0; fi
		sleep 0.05
	done
	echo "bench: nothing answers on 127.0.0.1:$1" >&2
	cat "$W"/*.log >&2
	exit 1
}
SETUPS=(moatless moatless-release moatless-nethttp)
[ -n "$H2" ] && SETUPS+=(moatless-h2)
SETUPS+=("${VARIANTS[@]}" nginx haproxy)
declare -A PORT=([direct]=$APP [moatless]=$MO_OUT [moatless-release]=$MO_OUTR [moatless-nethttp]=$MO_OUT0 [moatless-h2]=$MO_OUT2 [nginx]=$NG_OUT [haproxy]=$HA_OUT)
for s in "${VARIANTS[@]}"; do PORT[$s]=${VPORT[$s]}; done
for s in direct "${SETUPS[@]}"; do waitport "${PORT[$s]}"; done
# The outbound listener answers before the inbound one behind it is up
# (slow under callgrind): poll the whole pair, with a deadline.
for s in "${SETUPS[@]}"; do
	for _ in $(seq 1 600); do
		body=$(curl -s "http://127.0.0.1:${PORT[$s]}/api/check" || true)
		[ "$body" = "hello" ] && break
		sleep 0.1
	done
	[ "$body" = "hello" ] || { echo "bench: $s answered '$body', not hello" >&2; cat "$W"/*.log >&2; exit 1; }
done

# The processes measured: nginx forks its worker (the child of the master)
# unless it runs as one process.
worker_of() { if [ -n "$INSTR" ]; then echo "$1"; else pgrep -P "$1" | head -1; fi; }
declare -A PA=([moatless]=$PID_moout [moatless-release]=$PID_mooutr [moatless-nethttp]=$PID_moout0 [moatless-h2]=${PID_moout2:-} [nginx]=$(worker_of "$PID_ngout") [haproxy]=$PID_haout)
declare -A PB=([moatless]=$PID_moin [moatless-release]=$PID_moinr [moatless-nethttp]=$PID_moin0 [moatless-h2]=$PID_moin [nginx]=$(worker_of "$PID_ngin") [haproxy]=$PID_hain)
for s in "${VARIANTS[@]}"; do PA[$s]=${VPID_A[$s]} PB[$s]=${VPID_B[$s]}; done
label() {
	case $1 in
	moatless) echo "$EXE pair (HTTP/1.1 between sidecars, fast path; keeps its startup pages)" ;;
	moatless-release) echo "$EXE pair, the same releasing its startup pages once serving (the default)" ;;
	moatless-nethttp) echo "$EXE pair, disable_http1_fast_path (net/http only; keeps its pages)" ;;
	moatless-h2) echo "$EXE pair, upstream_http2 (HTTP/2 between sidecars; keeps its pages)" ;;
	variant*) echo "${VNAME[$1]} pair (keeps its pages)" ;;
	*) echo "$1 pair" ;;
	esac
}

if [ -n "$KEEP" ]; then
	for s in direct "${SETUPS[@]}"; do
		echo "$s: http://127.0.0.1:${PORT[$s]}/ proxies ${PA[$s]:-} ${PB[$s]:-}"
	done
	echo "bench: running until interrupted; files in $W" >&2
	while :; do sleep 3600; done
fi

if [ -n "$INSTR" ]; then
	# Instructions per request: warm up (pools, sessions, the first
	# faults), zero the counters, collect over one wrk run, dump.
	ir() { # pid → instructions collected since the last zeroing
		callgrind_control -d "$1" >/dev/null
		awk '/^totals:/ {print $2; exit}' "$(ls -t "$W"/cg."$1".* | head -1)"
	}
	declare -A IR_A IR_B REQS
	for s in "${SETUPS[@]}"; do
		port=${PORT[$s]} pa=${PA[$s]} pb=${PB[$s]}
		wrk -t1 -c8 -d5s "http://127.0.0.1:$port/" >/dev/null
		callgrind_control -i on "$pa" >/dev/null; callgrind_control -i on "$pb" >/dev/null
		callgrind_control -z "$pa" >/dev/null; callgrind_control -z "$pb" >/dev/null
		out=$(wrk -t1 -c8 -d"${DUR}s" "http://127.0.0.1:$port/")
		REQS[$s]=$(awk '/requests in/ {print $1}' <<<"$out")
		IR_A[$s]=$(ir "$pa") IR_B[$s]=$(ir "$pb")
		callgrind_control -i off "$pa" >/dev/null; callgrind_control -i off "$pb" >/dev/null
		echo "bench: $s done" >&2
	done
	{
		echo "Instructions per request (callgrind), loopback, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at the end; ${DUR}s at 8 connections per setup after a 5s warm-up; $(date -u +%Y-%m-%dT%H:%MZ)."
		echo
		echo "| setup | requests counted | instructions / request (client-side proxy) | instructions / request (server-side proxy) |"
		echo "|---|---:|---:|---:|"
		for s in "${SETUPS[@]}"; do
			echo "| $(label "$s") | ${REQS[$s]} | $(awk -v i="${IR_A[$s]}" -v n="${REQS[$s]}" 'BEGIN {printf "%.0f", i / n}') | $(awk -v i="${IR_B[$s]}" -v n="${REQS[$s]}" 'BEGIN {printf "%.0f", i / n}') |"
		done
	} | tee "${OUT:-/dev/null}"
	exit 0
fi

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Context switches of every thread, voluntary (blocking) and not.
ctxsw() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^(voluntary|nonvoluntary)_ctxt_switches/ {n += $2} END {print n}'; }
HZ=$(getconf CLK_TCK)

to_ms() { # wrk latency like 512.00us / 1.20ms / 1.01s → ms
	awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}

# wrk at about 1,000 requests/s: 6 connections, each waiting 5 ms between
# requests (the rate reached is printed: timers are coarse on a busy host).
cat > "$W/rate.lua" <<'LUA'
function delay() return 5 end
LUA
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
# RssAnon is the process's private memory; the rest of VmRSS is mostly
# file-backed pages of the executable, shared by every process running it.
anon() { awk '/RssAnon/ {print $2}' "/proc/$1/status"; }
# PSS divides each shared page among the processes mapping it: with several
# sidecars and the agent on a host, it is what one sidecar costs.
pss() { awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup"; }
mem() { awk -v k="$(rss "$1")" -v a="$(anon "$1")" -v p="$(pss "$1")" 'BEGIN {printf "%.1f (%.1f private, PSS %.1f)", k / 1024, a / 1024, p / 1024}'; }

declare -A RPS P50 P99 CPU_A CPU_B CS_A CS_B RSS_A RSS_B LOW_RPS LOW_A LOW_B
measure() { # setup port pidA pidB
	local name=$1 port=$2 pa=${3:-} pb=${4:-}
	local out
	if [ -n "$pa" ]; then
		# RSS at ~1,000 req/s, before any heavier load.
		out=$(wrk -t1 -c6 -d"${DUR}s" -s "$W/rate.lua" "http://127.0.0.1:$port/")
		LOW_RPS[$name]=$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
		LOW_A[$name]=$(mem "$pa")
		LOW_B[$name]=$(mem "$pb")
	fi
	if [ -n "$MEMONLY" ]; then echo "bench: $name done" >&2; return; fi
	# warm up: pools, sessions, caches
	wrk -t1 -c32 -d2s "http://127.0.0.1:$port/" >/dev/null
	local a0=0 b0=0 ca0=0 cb0=0
	[ -n "$pa" ] && a0=$(ticks "$pa") && b0=$(ticks "$pb") && ca0=$(ctxsw "$pa") && cb0=$(ctxsw "$pb")
	local reqs
	out=$(wrk -t2 -c32 -d"${DUR}s" "http://127.0.0.1:$port/")
	RPS[$name]=$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
	reqs=$(awk '/requests in/ {print $1}' <<<"$out")
	if [ -n "$pa" ]; then
		CPU_A[$name]=$(awk -v t="$(( $(ticks "$pa") - a0 ))" -v hz="$HZ" -v n="$reqs" 'BEGIN {printf "%.4f", t / hz / (n / 1000)}')
		CPU_B[$name]=$(awk -v t="$(( $(ticks "$pb") - b0 ))" -v hz="$HZ" -v n="$reqs" 'BEGIN {printf "%.4f", t / hz / (n / 1000)}')
		CS_A[$name]=$(awk -v c="$(( $(ctxsw "$pa") - ca0 ))" -v n="$reqs" 'BEGIN {printf "%.2f", c / n}')
		CS_B[$name]=$(awk -v c="$(( $(ctxsw "$pb") - cb0 ))" -v n="$reqs" 'BEGIN {printf "%.2f", c / n}')
		RSS_A[$name]=$(( $(rss "$pa") / 1024 ))
		RSS_B[$name]=$(( $(rss "$pb") / 1024 ))
	fi
	out=$(wrk -t1 -c1 -d"${DUR}s" --latency "http://127.0.0.1:$port/")
	P50[$name]=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
	P99[$name]=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
	echo "bench: $name done" >&2
}

# -r ROUNDS measures every setup ROUNDS times, each round in another
# order (rotated by one setup), and prints one table per round: on a
# shared machine whose load drifts, a setup measured first and one
# measured last see different machines; rounds in rotated order show it.
add() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%+.3f", a - b}'; }
[ -n "$OUT" ] && : >"$OUT"
for round in $(seq 1 "$ROUNDS"); do
	k=$(( (round - 1) % ${#SETUPS[@]} ))
	ORDER=("${SETUPS[@]:$k}" "${SETUPS[@]:0:$k}")
	[ -z "$MEMONLY" ] && measure direct "$APP"
	for s in "${ORDER[@]}"; do measure "$s" "${PORT[$s]}" "${PA[$s]}" "${PB[$s]}"; done
	{
		[ "$round" -gt 1 ] && echo
		[ "$ROUNDS" -gt 1 ] && echo "Round $round of $ROUNDS, measured in this order: ${ORDER[*]}."
		echo "Loopback, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at the end; ${DUR}s per measurement; $(date -u +%Y-%m-%dT%H:%MZ); sidecars run from $EXE${SIDECAR_ENV:+; sidecar environment $SIDECAR_ENV}."
		echo
		if [ -n "$MEMONLY" ]; then
			echo "| setup | MB at ~1k req/s: RSS (private, PSS), client-side proxy | the same, server-side proxy | req/s reached |"
			echo "|---|---:|---:|---:|"
			for s in "${SETUPS[@]}"; do echo "| $(label "$s") | ${LOW_A[$s]} | ${LOW_B[$s]} | ${LOW_RPS[$s]} |"; done
		else
			echo "| setup | req/s @32 conns | p50 @1 conn (ms) | p99 @1 conn (ms) | added p50 (ms) | added p99 (ms) | CPU s / 1k req (client-side / server-side proxy) | context switches / req (client / server) | RSS MB at ~1k req/s (client / server proxy) | RSS MB after the 32-conn run (client / server) |"
			echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
			echo "| direct | ${RPS[direct]} | ${P50[direct]} | ${P99[direct]} | – | – | – | – | – | – |"
			for s in "${SETUPS[@]}"; do
				echo "| $(label "$s") | ${RPS[$s]} | ${P50[$s]} | ${P99[$s]} | $(add "${P50[$s]}" "${P50[direct]}") | $(add "${P99[$s]}" "${P99[direct]}") | ${CPU_A[$s]} / ${CPU_B[$s]} | ${CS_A[$s]} / ${CS_B[$s]} | ${LOW_A[$s]} / ${LOW_B[$s]} (at ${LOW_RPS[$s]} req/s) | ${RSS_A[$s]} / ${RSS_B[$s]} |"
			done
		fi
	} | tee -a "${OUT:-/dev/null}"
done
