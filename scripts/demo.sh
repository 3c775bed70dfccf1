#!/usr/bin/env bash
# Sets everything up and runs the relay sample on the embedded broker:
# orders go in through the HTTP endpoint, the wasm component marks them
# shipped, and the shipments topic is printed. Needs only Rust (rustup).
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2
(cd sample-apps && cargo build --target wasm32-wasip2 --release)
cargo build -p wasi-messaging-provider
bin=target/debug/trigger-messaging
port=${PORT:-3030}
url=http://127.0.0.1:$port

"$bin" up -f sample-apps/relay/spin.toml --listen "127.0.0.1:$port" &
provider=$!
trap 'kill -TERM $provider 2>/dev/null || true' EXIT
until curl -s -o /dev/null "$url/"; do
  kill -0 $provider 2>/dev/null || { echo "the provider did not start" >&2; exit 1; }
  sleep 0.2
done

echo; echo "== watching relay/shipments and relay/rejected; publishing three orders to relay/orders"
timeout 30 "$bin" tail --url "$url" relay shipments --count 2 &
shipments=$!
timeout 30 "$bin" tail --url "$url" relay rejected --count 1 &
rejected=$!
sleep 0.5
"$bin" publish --url "$url" relay orders --type com.example.order.created \
  --data '{"sku":"BOOK-42","qty":2}' --content-type application/json --subject customer-7
"$bin" publish --url "$url" relay orders --type com.example.order.created --structured \
  --data 'one blue mug' --content-type text/plain
# No data: the relay refuses it; it is tried again 1 s, then 2 s later, and
# after its third attempt the provider dead-letters it to `rejected`.
"$bin" publish --url "$url" relay orders --type com.example.order.created
echo "(the third order has no data: the relay refuses it three times, 1 s then 2 s apart, and the provider dead-letters it to \`rejected\`)"
wait $shipments
wait $rejected
sleep 1

echo; echo "== stopping (SIGTERM): in-flight handlers finish, then the provider exits"
kill -TERM $provider
wait $provider
trap - EXIT
echo
echo "Run it yourself:  $bin up -f sample-apps/relay/spin.toml --listen 127.0.0.1:$port"
echo "then:             $bin tail relay shipments   and   $bin publish relay orders --type t --data hi"
