# The handler: gets the event JSON as $1, prints the result JSON.
handler() {
  EVENT_DATA=$1
  echo "handling an event of ${#EVENT_DATA} bytes" >&2
  echo "{\"message\": \"Hello from sh\", \"shell\": \"$(basename "$(readlink -f /proc/$$/exe)")\"}"
}
