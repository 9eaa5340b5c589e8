#!/usr/bin/env bash
# Makes waypoint/link/hot-code.txt again: the functions a serving waypoint runs, most
# instructions first, which the release build's linker places first in .text (link/hot_code.rs).
#
#   waypoint/link/hot-code.sh [WAYPOINT DATAPATH_BENCH]
#
# Without arguments it builds both in release: the waypoint alone, as the image does (built
# together with the benches, the waypoint crate gets the `testing` feature and other symbol
# hashes). It runs datapath_bench's short mode with each waypoint under valgrind's callgrind,
# which counts every instruction from the moment the waypoint serves (start-up is not counted:
# the trim takes its code out of memory), and lists every waypoint function that ran, the most
# instructions first. Every function, not a sample: one that runs once per connection would
# otherwise be left among the cold code and bring 64 KiB of it back into memory. Needs valgrind.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=waypoint/link/hot-code.txt
if [ $# -eq 2 ]; then
  waypoint=$(realpath "$1") bench=$(realpath "$2")
else
  target=$(cargo metadata --format-version 1 --no-deps | sed 's/.*"target_directory":"\([^"]*\)".*/\1/')
  cargo build --release --locked -p waypoint
  cargo build --release --locked -p waypoint-tests --bin datapath_bench
  waypoint=$target/release/waypoint bench=$target/release/datapath_bench
fi
command -v callgrind_control >/dev/null || { echo "hot-code.sh needs valgrind" >&2; exit 1; }
work=$(mktemp -d /tmp/waypoint-hot-code.XXXXXX)
trap 'rm -rf "$work"' EXIT

# datapath_bench starts the waypoint it is given and kills it (SIGKILL) when done. The wrapper
# it is given instead starts the waypoint under callgrind, with counting off until the waypoint
# logs that its HBONE listener accepts, and notes its pid: it outlives the killed wrapper, and
# writes its counts when stopped below.
#
# A waypoint in a cluster is also scraped (Prometheus, every 15 s) and probed (the kubelet, every
# few seconds); their code runs again and again, so it belongs with the hot code. While it
# counts, the wrapper asks the stats and health listeners the waypoint announces on stdout
# once a second.
cat > "$work/wrap.sh" <<WRAP
#!/usr/bin/env bash
log="$work/waypoint.\$\$.log"
valgrind --tool=callgrind --demangle=no --instr-atstart=no --dump-instr=no \
  --callgrind-out-file="$work/callgrind.%p" "$waypoint" "\$@" \
  > >(tee -a "\$log") 2> >(tee -a "\$log" >&2) &
wp=\$!
echo \$wp >> "$work/waypoints"
get() { # get HOST:PORT PATH: an HTTP/1.0 GET through bash's /dev/tcp, the answer dropped
  exec 3<> "/dev/tcp/\${1%:*}/\${1##*:}" || return 0
  printf 'GET %s HTTP/1.0\r\n\r\n' "\$2" >&3
  cat <&3 > /dev/null
  exec 3<&-
}
(until grep -q "HBONE listener accepting" "\$log"; do sleep 0.2; done
 callgrind_control --instr=on \$wp > /dev/null
 stats=\$(sed -n 's/^waypoint stats listening on //p' "\$log")
 health=\$(sed -n 's/^waypoint health listening on //p' "\$log")
 while kill -0 \$wp 2> /dev/null; do
   get "\$stats" /stats/prometheus
   get "\$health" /healthz/ready
   sleep 1
 done) &
wait \$wp
WRAP
chmod +x "$work/wrap.sh"
# Few requests: under callgrind the waypoint is some 50 times slower, and what runs per request
# is the same at any count.
"$bench" --waypoint-bin "$work/wrap.sh" --requests 2000 --paced-requests 1000 --idle-tunnels 0 \
  --grpc-requests 0 --access-log-rounds 0 --trace-rounds 0
while read -r pid; do
  callgrind_control --instr=off "$pid" > /dev/null # the drain's code is not the request path's
  kill -TERM "$pid"
  tail --pid="$pid" -f /dev/null
done < "$work/waypoints"

{
  echo "# The waypoint's hot code, one symbol per line, most instructions first: the release binary's"
  echo "# linker (lld) places these functions first in .text, so the code a serving waypoint runs"
  echo "# sits in a few pages (docs/architecture.md, \"Code layout\"). Made by"
  echo "# waypoint/link/hot-code.sh from datapath_bench under callgrind; symbols of another toolchain"
  echo "# or another build are skipped by lld."
  echo "# $(rustc --version)"
  # Callgrind's format: `ob=`/`fn=` name the object and function the next cost lines are of
  # (`(id) name` the first time, `(id)` after; `cob=`/`cfn=` share the ids), and the cost line
  # after `calls=` is a call's inclusive cost, not the function's own.
  cat "$work"/callgrind.* | awk -v bin="$waypoint" '
    function named(s, ids,   i, id) {
      if (substr(s, 1, 1) != "(") return s
      i = index(s, ")"); id = substr(s, 2, i - 2)
      if (i < length(s)) ids[id] = substr(s, i + 2)
      return ids[id]
    }
    /^ob=/ { ob = named(substr($0, 4), objects); next }
    /^cob=/ { named(substr($0, 5), objects); next }
    /^fn=/ { fn = named(substr($0, 4), functions); next }
    /^cfn=/ { named(substr($0, 5), functions); next }
    /^calls=/ { call = 1; next }
    /^[0-9+*-]/ { if (call) call = 0; else if (ob == bin) own[fn] += $2; next }
    END { for (f in own) if (own[f] > 0) print own[f], f }' \
    | sort -k1,1nr -k2,2 | awk '{print $2}'
} > "$out.new"
mv "$out.new" "$out"
echo "$(grep -vc '^#' "$out") functions in $out"
