#!/usr/bin/env bash
# The Java side of the compatibility suite: resolves the pinned clients and tools
# (pom.xml: org.apache.kafka:kafka-clients and kafka-tools) from Maven Central into
# compat/java/target/lib, once, and compiles the scenarios into target/classes.
# server/tests/java_clients.rs runs them against our broker; .ci/run calls this first.
set -euo pipefail
cd "$(dirname "$0")"
if [[ ! -f target/lib/.complete ]]; then
  rm -rf target/lib
  mvn -q -B -Dstyle.color=never dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory=target/lib
  touch target/lib/.complete
fi
rm -rf target/classes
mkdir -p target/classes
javac -nowarn -d target/classes -cp "target/lib/*" src/main/java/compat/*.java
echo "compat/java: $(ls target/lib/*.jar | wc -l) jars, scenarios compiled"
