#!/usr/bin/env bash
# Apache Kafka (the broker itself, KRaft, single node) as a loadgen peer, from Maven
# Central's jars, on loopback only: PLAINTEXT on 127.0.0.1:29092, its controller on
# 127.0.0.1:29093, data under a fresh temporary directory each start.
#   scripts/kafka.sh install          resolve org.apache.kafka:kafka_2.13 and its runtime
#                                     dependencies with Maven into $KAFKA_PEER_HOME/lib
#   scripts/kafka.sh start [MODE]     MODE paper (default): Kafka's defaults, the page cache
#                                     flushes (as our `flush = interval` does not promise
#                                     more); durable: log.flush.interval.messages=1, an
#                                     fsync per append, as our default `flush = per-append`
#   scripts/kafka.sh stop             stop the broker this script started, by its PID
# Everything else is Kafka's default, except what a single node needs (internal topics
# with replication factor 1). The broker's log: $KAFKA_PEER_HOME/kafka.log.
# Environment: KAFKA_VERSION (default 4.4.0, the newest 4.x that resolves here),
# KAFKA_PEER_HOME (default /var/lib/kafka-peer), KAFKA_HEAP (default 1G).
set -euo pipefail
VERSION=${KAFKA_VERSION:-4.4.0}
HOME_DIR=${KAFKA_PEER_HOME:-/var/lib/kafka-peer}
HEAP=${KAFKA_HEAP:-1G}
LIB=$HOME_DIR/lib-$VERSION
PID_FILE=$HOME_DIR/kafka.pid
PORT=29092
CONTROLLER_PORT=29093

port_open() { (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; }

case "${1:-}" in
  install)
    if [[ -f $LIB/.complete ]]; then echo "kafka: $VERSION already in $LIB"; exit 0; fi
    mkdir -p "$HOME_DIR/pom-$VERSION"
    # A throwaway project whose only purpose is to name the broker and a logging backend
    # (Kafka logs through the SLF4J 1.7 API; Log4j 2's binding for it) for Maven to resolve.
    cat >"$HOME_DIR/pom-$VERSION/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.loadgen</groupId>
  <artifactId>kafka-peer</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>2.24.3</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>2.24.3</version>
    </dependency>
  </dependencies>
</project>
POM
    rm -rf "$LIB"
    mvn -q -B -Dstyle.color=never -f "$HOME_DIR/pom-$VERSION/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$LIB"
    ls "$LIB"/kafka_2.13-"$VERSION".jar >/dev/null
    touch "$LIB/.complete"
    echo "kafka: $VERSION installed in $LIB ($(ls "$LIB" | wc -l) jars)"
    ;;
  start)
    mode=${2:-paper}
    [[ -f $LIB/.complete ]] || { echo "kafka: run '$0 install' first" >&2; exit 1; }
    if port_open; then echo "kafka: something already listens on 127.0.0.1:$PORT" >&2; exit 1; fi
    data=$(mktemp -d /tmp/kafka-peer-data.XXXXXX)
    props=$HOME_DIR/server.properties
    cat >"$props" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$data
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
PROPS
    case $mode in
      paper) ;;
      durable) echo "log.flush.interval.messages=1" >>"$props" ;;
      *) echo "usage: $0 start [paper|durable]" >&2; exit 2 ;;
    esac
    cat >"$HOME_DIR/log4j2.properties" <<'LOG4J'
rootLogger.level=INFO
rootLogger.appenderRef.stdout.ref=STDOUT
appender.stdout.type=Console
appender.stdout.name=STDOUT
appender.stdout.layout.type=PatternLayout
appender.stdout.layout.pattern=[%d] %p %m (%c)%n
logger.kafka.name=kafka
logger.kafka.level=WARN
logger.apache.name=org.apache.kafka
logger.apache.level=WARN
LOG4J
    java_run() { java -cp "$LIB/*" -Dlog4j2.configurationFile="$HOME_DIR/log4j2.properties" "$@"; }
    cluster_id=$(java_run kafka.tools.StorageTool random-uuid | tail -1)
    java_run kafka.tools.StorageTool format -t "$cluster_id" -c "$props" >"$HOME_DIR/format.log" 2>&1 ||
      { cat "$HOME_DIR/format.log" >&2; exit 1; }
    nohup java -Xms"$HEAP" -Xmx"$HEAP" -server -XX:+UseG1GC -cp "$LIB/*" \
      -Dlog4j2.configurationFile="$HOME_DIR/log4j2.properties" \
      kafka.Kafka "$props" >"$HOME_DIR/kafka.log" 2>&1 &
    echo $! >"$PID_FILE"
    echo "$data" >"$HOME_DIR/data-dir"
    for _ in $(seq 1 120); do
      if port_open; then
        echo "kafka: $VERSION up on 127.0.0.1:$PORT ($mode, pid $(cat "$PID_FILE"), data in $data)"
        exit 0
      fi
      kill -0 "$(cat "$PID_FILE")" 2>/dev/null || { tail -20 "$HOME_DIR/kafka.log" >&2; exit 1; }
      sleep 0.5
    done
    echo "kafka: 127.0.0.1:$PORT did not open within 60 s" >&2
    exit 1
    ;;
  stop)
    if [[ -f $PID_FILE ]]; then
      pid=$(cat "$PID_FILE")
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      if kill -0 "$pid" 2>/dev/null; then
        echo "kafka: pid $pid ignored TERM for 60 s; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
      fi
      rm -f "$PID_FILE"
    fi
    if [[ -f $HOME_DIR/data-dir ]]; then
      rm -rf "$(cat "$HOME_DIR/data-dir")"
      rm -f "$HOME_DIR/data-dir"
    fi
    echo "kafka: stopped"
    ;;
  *) echo "usage: $0 install|start [paper|durable]|stop" >&2; exit 2 ;;
esac
