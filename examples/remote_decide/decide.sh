#!/bin/sh
# Ask a running Stepguard whether a request may proceed, with nothing but curl.
#
#   STEPGUARD_URL=http://127.0.0.1:9091 STEPGUARD_API_KEY=sgk_... \
#     ./decide.sh METHOD PATH [SESSION_TOKEN] [ACTION] [ATTRIBUTES_JSON]
#
# Prints the decision JSON on stdout. Exit status: 0 allow, 10 step up, 20 deny,
# 2 usage, 3 Stepguard unreachable or refused the call (treat as deny: fail closed).
set -eu

if [ "$#" -lt 2 ]; then
    echo "usage: $0 METHOD PATH [SESSION_TOKEN] [ACTION] [ATTRIBUTES_JSON]" >&2
    exit 2
fi
: "${STEPGUARD_URL:?set STEPGUARD_URL, e.g. http://127.0.0.1:9091}"
: "${STEPGUARD_API_KEY:?set STEPGUARD_API_KEY (stepguard api-keys create NAME)}"

method=$1 path=$2 token=${3:-} action=${4:-} attributes=${5:-"{}"}
host=${STEPGUARD_APP_HOST:-localhost}

json_string() {  # a JSON string literal for $1 (escapes backslash and double quote)
    printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"
}

body="{\"method\": $(json_string "$method"), \"host\": $(json_string "$host"),"
body="$body \"path\": $(json_string "$path"), \"action\": $(json_string "$action"),"
body="$body \"attributes\": $attributes"
if [ -n "$token" ]; then
    body="$body, \"session_token\": $(json_string "$token")"
fi
body="$body}"

# The API key reaches curl on its standard input (-H @-), never on a command line (ps).
answer=$(printf 'Authorization: Bearer %s\n' "$STEPGUARD_API_KEY" |
    curl --silent --show-error --max-time 2 --fail-with-body \
         -H @- -H 'Content-Type: application/json' \
         --data-binary "$body" "$STEPGUARD_URL/api/v1/decide") || {
    echo "stepguard: no decision (${answer:-unreachable}); failing closed" >&2
    exit 3
}
printf '%s\n' "$answer"
case $answer in
    *'"decision":"allow"'*) exit 0 ;;
    *'"decision":"step_up"'*) exit 10 ;;
    *) exit 20 ;;
esac
