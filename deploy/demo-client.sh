#!/bin/sh
# The client of docker-compose.yml. In a loop, fetches a page from every
# destination through both frontends and prints what comes back:
#   grpc     `knats dial` over the gRPC frontend's Unix socket (what kube-apiserver
#            does with proxyProtocol GRPC over uds)
#   connect  curl through the HTTP CONNECT frontend over mTLS TCP (HTTPConnect over tcp)
# and, every few rounds, the fleet as `knats status` sees it on the bus.
set -u

uds=${DEMO_UDS:-/run/knats/konnectivity-server.socket}
proxy=${DEMO_PROXY:-https://frontend-connect:8131}
certs=${DEMO_CERTS:-/certs}
targets=${DEMO_TARGETS:-web-a:8080 web-b:8080}
interval=${DEMO_INTERVAL:-2}
status_every=${DEMO_STATUS_EVERY:-15}

trap 'exit 0' INT TERM

via_grpc() {
  out=$(printf 'GET /via-grpc HTTP/1.0\r\nHost: %s\r\n\r\n' "$1" |
    knats dial --uds-name "$uds" --timeout 5s "$1" 2>&1)
  report grpc "$1" $? "$out"
}

via_connect() {
  # --proxytunnel: CONNECT even for http:// (the frontend, like upstream, speaks nothing else)
  out=$(curl -sS --max-time 10 --proxy "$proxy" --proxytunnel --proxy-cacert "$certs/ca.crt" \
    --proxy-cert "$certs/client.crt" --proxy-key "$certs/client.key" "http://$1/via-connect" 2>&1)
  report connect "$1" $? "$out"
}

report() { # report DOOR TARGET EXIT_CODE OUTPUT
  if [ "$3" -eq 0 ]; then verdict=ok; else verdict=FAIL; fi
  last=$(printf '%s\n' "$4" | tr -d '\r' | sed '/^$/d' | tail -n 1)
  printf '%s %-7s %-4s %-12s %s\n' "$(date +%T)" "$1" "$verdict" "$2" "$last"
}

round=0
while :; do
  round=$((round + 1))
  for target in $targets; do
    via_grpc "$target"
    via_connect "$target"
  done
  if [ $((round % status_every)) -eq 1 ]; then
    knats status --wait 1s 2>&1 | sed 's/^/    status: /'
  fi
  sleep "$interval"
done
