#!/usr/bin/env bash
# Seed 002's Spring Boot application (compat/spring): resolves Spring Boot and Spring
# Kafka (pinned by pom.xml's parent) from Maven Central into target/lib, once, and
# compiles the application into target/classes. server/tests/spring_kafka.rs runs it.
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
cp -r src/main/resources/. target/classes/
javac -nowarn -parameters -d target/classes -cp "target/lib/*" src/main/java/compat/spring/*.java
echo "compat/spring: $(ls target/lib/*.jar | wc -l) jars, application compiled"
