#!/usr/bin/env bash
# ActiveMQ 5.17 from Debian's package, on loopback only, with STOMP on 127.0.0.1:61613.
#   scripts/activemq.sh install          apt-get install activemq, enable the `main` instance
#   scripts/activemq.sh start [MODE]     MODE paper (default): KahaDB journal synced once a
#                                        second (the paper's "asynchronous flush");
#                                        durable: ActiveMQ's default, a sync per persistent send
#   scripts/activemq.sh stop             stop the broker this script started, by its PID
# PID 1 here is not systemd, so the broker is started by hand (see ../shared/services.md).
set -euo pipefail
AVAILABLE=/etc/activemq/instances-available/main
XML=$AVAILABLE/activemq.xml
PID_FILE=/var/run/activemq/main.pid

port_open() { (exec 3<>/dev/tcp/127.0.0.1/61613) 2>/dev/null; }

case "${1:-}" in
  install)
    if [[ ! -f $XML ]]; then
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq activemq >/dev/null
    fi
    ln -sfn "$AVAILABLE" /etc/activemq/instances-enabled/main
    if ! grep -q 'name="stomp"' "$XML"; then
      sed -i 's#<transportConnector name="openwire"[^>]*/>#&\n            <transportConnector name="stomp" uri="stomp://127.0.0.1:61613"/>#' "$XML"
    fi
    grep -q 'name="stomp"' "$XML" || { echo "activemq: could not enable STOMP in $XML" >&2; exit 1; }
    # Debian's activemq.xml leaves out upstream's <systemUsage>: without it the memory
    # limit (1 GB) is over Debian's 512 MB heap, and a backlog of a million messages
    # exhausts the heap instead of paging to KahaDB. Upstream's setting: 70% of the heap.
    if ! grep -q '<systemUsage>' "$XML"; then
      sed -i 's#</persistenceAdapter>#&\n        <systemUsage><systemUsage><memoryUsage><memoryUsage percentOfJvmHeap="70"/></memoryUsage></systemUsage></systemUsage>#' "$XML"
    fi
    grep -q 'percentOfJvmHeap' "$XML" || { echo "activemq: could not set systemUsage in $XML" >&2; exit 1; }
    ;;
  start)
    mode=${2:-paper}
    if port_open; then echo "activemq: something already listens on 127.0.0.1:61613"; exit 0; fi
    # Set the journal's sync strategy on the <kahaDB .../> element.
    sed -i -E 's#<kahaDB directory="([^"]*)"[^/]*/>#<kahaDB directory="\1"/>#' "$XML"
    case $mode in
      paper) sed -i -E 's#<kahaDB directory="([^"]*)"/>#<kahaDB directory="\1" journalDiskSyncStrategy="periodic" journalDiskSyncInterval="1000"/>#' "$XML" ;;
      durable) ;;
      *) echo "usage: $0 start [paper|durable]" >&2; exit 2 ;;
    esac
    rm -f "$PID_FILE"
    /etc/init.d/activemq start main >/dev/null
    for _ in $(seq 1 120); do
      if port_open; then echo "activemq: up on 127.0.0.1:61613 ($mode, pid $(cat "$PID_FILE" 2>/dev/null))"; exit 0; fi
      sleep 0.5
    done
    echo "activemq: STOMP did not open within 60 s" >&2
    exit 1
    ;;
  stop)
    if [[ -f $PID_FILE ]]; then
      pid=$(cat "$PID_FILE")
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      if kill -0 "$pid" 2>/dev/null; then
        echo "activemq: pid $pid ignored TERM for 60 s; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
      fi
      rm -f "$PID_FILE"
    fi
    echo "activemq: stopped"
    ;;
  *) echo "usage: $0 install|start [paper|durable]|stop" >&2; exit 2 ;;
esac
