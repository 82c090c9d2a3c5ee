#!/usr/bin/env bash
# ActiveMQ 5.17 from Debian's package, on loopback only, with STOMP on 127.0.0.1:61613.
#   scripts/activemq.sh install          apt-get install activemq, enable the `main` instance
#   scripts/activemq.sh start [MODE]     MODE paper (default): KahaDB journal synced once a
#                                        second (the paper's "asynchronous flush");
#                                        durable: ActiveMQ's default, a sync per persistent send
#   scripts/activemq.sh stop             stop the broker this script started, by its PID
# The broker's log: /var/lib/activemq/main/data/console.log.
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
    # Debian's activemq.xml leaves out upstream's <systemUsage>, so the memory limit
    # (1 GB) is over Debian's 512 MB heap and a large backlog exhausts the heap instead of
    # paging to KahaDB. Upstream's own setting (1 GB heap, 70%) is not enough either:
    # measured here, a 200-byte STOMP message is charged ~1.2 KB against the limit but
    # takes ~1.7 KB of heap, so at ~600k queued messages the heap was full and the broker
    # spent its time in full GCs until the client's connection broke. A 2 GB heap with the
    # limit at 40% of it pages to KahaDB with room to spare (2M queued: no full GC).
    if ! grep -q 'percentOfJvmHeap="40"' "$XML"; then
      sed -i '/<systemUsage>/d' "$XML"
      sed -i 's#</persistenceAdapter>#&\n        <systemUsage><systemUsage><memoryUsage><memoryUsage percentOfJvmHeap="40"/></memoryUsage></systemUsage></systemUsage>#' "$XML"
    fi
    grep -q 'percentOfJvmHeap="40"' "$XML" || { echo "activemq: could not set systemUsage in $XML" >&2; exit 1; }
    # The log file below is opened before the broker first creates its data directory.
    install -d -o activemq -g activemq /var/lib/activemq/main /var/lib/activemq/main/data
    # The instance's `options` replaces Debian's global activemq-options (it is not
    # layered on it), so it repeats that file with two changes: the heap, and the
    # console (where the log goes) in the data directory instead of /dev/null.
    cat >"$AVAILABLE/options" <<'OPTIONS'
STARTTIME=5
ACTIVEMQ_BASE="/var/lib/activemq/$INSTANCE"
JAVA_HOME="/usr/lib/jvm/default-java/"
ACTIVEMQ_OPTS="-Xms2G -Xmx2G -Dorg.apache.activemq.UseDedicatedTaskRunner=true -Dlog4j.configuration=file:/etc/activemq/instances-enabled/main/log4j.properties"
ACTIVEMQ_ARGS="start xbean:activemq.xml"
ACTIVEMQ_OUT="/var/lib/activemq/$INSTANCE/data/console.log"
OPTIONS
    # Debian's build logs through log4j 1.2 but ships only a log4j2 file: without this
    # the broker logs nothing at all.
    cat >"$AVAILABLE/log4j.properties" <<'LOG4J'
log4j.rootLogger=INFO, console
log4j.logger.org.apache.activemq.spring=WARN
log4j.logger.org.springframework=WARN
log4j.logger.org.apache.xbean=WARN
log4j.appender.console=org.apache.log4j.ConsoleAppender
log4j.appender.console.layout=org.apache.log4j.PatternLayout
log4j.appender.console.layout.ConversionPattern=%d | %-5p | %m | %c | %t%n
LOG4J
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
