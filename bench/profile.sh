#!/bin/sh
# Instructions per call of mqrpc and of raw rumqttc (client and server in
# one process, through Mosquitto), with callgrind. Each system runs twice,
# with N1 and N2 sequential `add` calls; (Ir(N2) - Ir(N1)) / (N2 - N1) is
# the cost of one call without start-up. Instruction counts do not depend
# on other load on the machine, unlike times.
#
#   cargo build --release -p mqrpc-bench && sh bench/profile.sh [N1 N2 QOS IN_FLIGHT]
#
# Leaves callgrind.out.<system>.qos<QOS>.<N> in target/mqrpc-bench/profile/; see the
# functions with e.g.
#   callgrind_annotate --inclusive=yes target/mqrpc-bench/profile/callgrind.out.mqrpc.qos1.3000
set -eu
cd "$(dirname "$0")/.."
N1=${1:-1000}
N2=${2:-3000}
QOS=${3:-1}
DEPTH=${4:-1}
BIN=target/release/mqrpc-bench
OUT=target/mqrpc-bench/profile
mkdir -p "$OUT"
total() {
    # "summary: <Ir>" (or "totals:") line of a callgrind output file
    awk '/^(summary|totals):/ { print $2; exit }' "$1"
}
for system in mqrpc raw-rumqttc; do
    for n in "$N1" "$N2"; do
        valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out.$system.qos$QOS.d$DEPTH.$n" \
            "$BIN" --profile "$system" --calls "$n" --qos "$QOS" --in-flight "$DEPTH" \
            > "$OUT/$system.qos$QOS.d$DEPTH.$n.json" 2> "$OUT/$system.qos$QOS.d$DEPTH.$n.valgrind.log"
    done
    a=$(total "$OUT/callgrind.out.$system.qos$QOS.d$DEPTH.$N1")
    b=$(total "$OUT/callgrind.out.$system.qos$QOS.d$DEPTH.$N2")
    echo "$system qos$QOS, $DEPTH in flight: $(( (b - a) / (N2 - N1) )) instructions per call ($N1 vs $N2 calls); allocations: $(cat "$OUT/$system.qos$QOS.d$DEPTH.$N2.json")"
done
