#!/usr/bin/env bash
# The Node.js client of the compatibility suite (KafkaJS, pinned in package.json and
# package-lock.json, fetched from the npm registry): installs it into node_modules, once.
# server/tests/node_clients.rs runs scenarios.js against our broker; .ci/run calls this.
set -euo pipefail
cd "$(dirname "$0")"
if [[ ! -f node_modules/.complete ]]; then
  npm ci --silent --no-audit --no-fund
  touch node_modules/.complete
fi
echo "compat/node: kafkajs $(node -p 'require("kafkajs/package.json").version') installed"
