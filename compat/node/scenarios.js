// KafkaJS scenarios against one broker: prints one PASS or FAIL line per scenario (the
// test and scripts/compat-table.sh read them), exits non-zero if any failed.
// Usage: node scenarios.js BOOTSTRAP
'use strict';
process.env.KAFKAJS_NO_PARTITIONER_WARNING = '1';
const { Kafka, logLevel } = require('kafkajs');

const bootstrap = process.argv[2];
if (!bootstrap) {
  console.error('usage: node scenarios.js BOOTSTRAP');
  process.exit(2);
}
const kafka = new Kafka({ clientId: 'compat-kafkajs', brokers: [bootstrap], logLevel: logLevel.WARN });
const topic = `kafkajs-${Date.now()}`;
const group = `kafkajs-group-${Date.now()}`;
const messages = 300;
let failures = 0;

async function scenario(name, run) {
  try {
    const detail = await run();
    console.log(`PASS ${name} (${detail ?? ''})`);
  } catch (e) {
    failures += 1;
    console.log(`FAIL ${name}: ${e && e.stack ? e.stack.split('\n')[0] : e}`);
  }
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function main() {
  const admin = kafka.admin();
  await admin.connect();

  await scenario('kafkajs.admin.createTopics', async () => {
    const created = await admin.createTopics({ topics: [{ topic, numPartitions: 3 }], waitForLeaders: true });
    check(created, 'not created');
    return topic;
  });

  await scenario('kafkajs.admin.fetchTopicMetadata', async () => {
    const { topics } = await admin.fetchTopicMetadata({ topics: [topic] });
    check(topics[0].partitions.length === 3, `partitions ${topics[0].partitions.length}`);
    return `${topics[0].partitions.length} partitions`;
  });

  await scenario('kafkajs.producer.idempotent', async () => {
    const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
    let acked = 0;
    for (let batch = 0; batch < messages / 50; batch++) {
      const sent = await producer.send({
        topic,
        acks: -1,
        messages: Array.from({ length: 50 }, (_, i) => ({
          key: `k${batch * 50 + i}`,
          value: `v${batch * 50 + i}`,
        })),
      });
      acked += 50;
      check(sent.every((r) => r.errorCode === 0), JSON.stringify(sent));
    }
    await producer.disconnect();
    return `${acked} acknowledged`;
  });

  await scenario('kafkajs.admin.fetchTopicOffsets', async () => {
    const offsets = await admin.fetchTopicOffsets(topic);
    const total = offsets.reduce((sum, p) => sum + Number(p.high), 0);
    check(total === messages, `end offsets sum to ${total}`);
    return `end offsets sum to ${total}`;
  });

  await scenario('kafkajs.consumer.group', async () => {
    const consumer = kafka.consumer({ groupId: group, sessionTimeout: 10000, heartbeatInterval: 1000 });
    await consumer.connect();
    await consumer.subscribe({ topic, fromBeginning: true });
    const seen = new Set();
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`read ${seen.size} of ${messages}`)), 60000);
      consumer
        .run({
          eachMessage: async ({ message }) => {
            seen.add(message.value.toString());
            if (seen.size === messages) {
              clearTimeout(timer);
              resolve();
            }
          },
        })
        .catch(reject);
    });
    // Commits go out on the next interval or at disconnect.
    await consumer.disconnect();
    return `read ${seen.size}, committed`;
  });

  await scenario('kafkajs.admin.groups', async () => {
    const { groups } = await admin.listGroups();
    check(groups.some((g) => g.groupId === group), `group not listed: ${JSON.stringify(groups)}`);
    const described = await admin.describeGroups([group]);
    const state = described.groups[0].state;
    const offsets = await admin.fetchOffsets({ groupId: group, topics: [topic] });
    const committed = offsets[0].partitions.reduce((sum, p) => sum + Number(p.offset), 0);
    check(committed === messages, `committed offsets sum to ${committed}`);
    return `state ${state}, committed offsets sum to ${committed}`;
  });

  await scenario('kafkajs.admin.deleteTopics', async () => {
    await admin.deleteTopics({ topics: [topic] });
    const listed = await admin.listTopics();
    check(!listed.includes(topic), 'still listed');
    return '';
  });

  await admin.disconnect();
}

main()
  .catch((e) => {
    failures += 1;
    console.log(`FAIL kafkajs.setup: ${e}`);
  })
  .finally(() => process.exit(failures === 0 ? 0 : 1));
