package compat;

import java.time.Duration;
import java.util.ArrayList;
import java.util.Collection;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.Config;
import org.apache.kafka.clients.admin.ConsumerGroupDescription;
import org.apache.kafka.clients.admin.DescribeClusterResult;
import org.apache.kafka.clients.admin.GroupListing;
import org.apache.kafka.clients.admin.ListOffsetsResult;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.config.ConfigResource;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * The Java client (org.apache.kafka:kafka-clients) against one broker: the AdminClient,
 * the default producer (idempotent, acks=all) and a consumer group of three with commits
 * and seeks, and static membership. Each scenario prints one line, "PASS name" or
 * "FAIL name: why"; the exit status is the number of failures.
 * Usage: ClientScenarios BOOTSTRAP [ONLY] (ONLY: run the scenarios named so, by prefix)
 */
public final class ClientScenarios {
    private static final Duration WAIT = Duration.ofSeconds(30);
    private static final int MESSAGES = 1000;
    private static final int PARTITIONS = 3;

    private final String bootstrap;
    private final String topic = "java-compat-" + System.currentTimeMillis();
    private final String group = topic + "-group";
    private int failures;

    /** Runs only the scenarios whose name starts with this (the topic is always created). */
    private final String only;

    private ClientScenarios(String bootstrap, String only) {
        this.bootstrap = bootstrap;
        this.only = only;
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 1 || args.length > 2) {
            System.err.println("usage: ClientScenarios BOOTSTRAP [ONLY]");
            System.exit(2);
        }
        ClientScenarios s = new ClientScenarios(args[0], args.length > 1 ? args[1] : "");
        s.runAll();
        System.exit(s.failures);
    }

    interface Scenario {
        String run() throws Exception;
    }

    private void scenario(String name, Scenario body) {
        if (!name.startsWith(only) && !name.equals("admin.createTopics")) {
            return;
        }
        try {
            String detail = body.run();
            System.out.println("PASS " + name + (detail.isEmpty() ? "" : " (" + detail + ")"));
        } catch (Throwable e) {
            failures++;
            Throwable root = e;
            while (root.getCause() != null && root.getCause() != root) {
                root = root.getCause();
            }
            System.out.println("FAIL " + name + ": " + root.getClass().getSimpleName() + ": "
                    + root.getMessage());
        }
        System.out.flush();
    }

    private static void check(boolean ok, String what) {
        if (!ok) {
            throw new AssertionError(what);
        }
    }

    private Properties common() {
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "15000");
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "30000");
        return p;
    }

    private void runAll() throws Exception {
        try (Admin admin = Admin.create(common())) {
            scenario("admin.describeCluster", () -> {
                DescribeClusterResult c = admin.describeCluster();
                int nodes = c.nodes().get(30, TimeUnit.SECONDS).size();
                String id = c.clusterId().get(30, TimeUnit.SECONDS);
                check(nodes >= 1, "no nodes");
                check(c.controller().get(30, TimeUnit.SECONDS) != null, "no controller");
                return nodes + " node(s), cluster id " + id;
            });
            scenario("admin.createTopics", () -> {
                admin.createTopics(List.of(new NewTopic(topic, PARTITIONS, (short) 1)))
                        .all().get(30, TimeUnit.SECONDS);
                return topic;
            });
            scenario("admin.listTopics", () -> {
                Set<String> names = admin.listTopics().names().get(30, TimeUnit.SECONDS);
                check(names.contains(topic), "created topic not listed: " + names);
                return names.size() + " topic(s)";
            });
            scenario("admin.describeTopics", () -> {
                TopicDescription d = admin.describeTopics(List.of(topic)).allTopicNames()
                        .get(30, TimeUnit.SECONDS).get(topic);
                check(d.partitions().size() == PARTITIONS, "partitions: " + d.partitions().size());
                check(d.partitions().get(0).leader() != null, "no leader");
                return PARTITIONS + " partitions, leader " + d.partitions().get(0).leader().id();
            });
            scenario("admin.describeConfigs(topic)", () -> {
                ConfigResource r = new ConfigResource(ConfigResource.Type.TOPIC, topic);
                Config c = admin.describeConfigs(List.of(r)).all().get(30, TimeUnit.SECONDS).get(r);
                check(c.get("retention.ms") != null, "no retention.ms");
                return "retention.ms=" + c.get("retention.ms").value();
            });
            scenario("admin.describeConfigs(broker)", () -> {
                String id = String.valueOf(admin.describeCluster().nodes().get(30, TimeUnit.SECONDS)
                        .iterator().next().id());
                ConfigResource r = new ConfigResource(ConfigResource.Type.BROKER, id);
                Config c = admin.describeConfigs(List.of(r)).all().get(30, TimeUnit.SECONDS).get(r);
                check(c.get("advertised.listeners") != null, "no advertised.listeners");
                return "advertised.listeners=" + c.get("advertised.listeners").value();
            });

            Map<Integer, Long> lastOffsets = new ConcurrentHashMap<>();
            scenario("producer.idempotent-acks-all", () -> {
                Properties p = common();
                p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
                p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
                p.put(ProducerConfig.LINGER_MS_CONFIG, "5");
                try (KafkaProducer<String, String> producer = new KafkaProducer<>(p)) {
                    List<Future<RecordMetadata>> sent = new ArrayList<>();
                    for (int i = 0; i < MESSAGES; i++) {
                        sent.add(producer.send(new ProducerRecord<>(topic, "key-" + (i % 17), "value-" + i)));
                    }
                    producer.flush();
                    for (Future<RecordMetadata> f : sent) {
                        RecordMetadata m = f.get(30, TimeUnit.SECONDS);
                        lastOffsets.merge(m.partition(), m.offset(), Math::max);
                    }
                }
                return MESSAGES + " acknowledged, last offsets " + lastOffsets;
            });
            scenario("admin.listOffsets", () -> {
                Map<TopicPartition, OffsetSpec> q = new HashMap<>();
                for (int i = 0; i < PARTITIONS; i++) {
                    q.put(new TopicPartition(topic, i), OffsetSpec.latest());
                }
                Map<TopicPartition, ListOffsetsResult.ListOffsetsResultInfo> r =
                        admin.listOffsets(q).all().get(30, TimeUnit.SECONDS);
                long total = r.values().stream().mapToLong(ListOffsetsResult.ListOffsetsResultInfo::offset).sum();
                check(total == MESSAGES, "latest offsets sum to " + total);
                return "latest offsets sum to " + total;
            });
            scenario("consumer.group-of-three", () -> consumeAsGroup());
            scenario("admin.listGroups", () -> {
                Collection<GroupListing> groups = admin.listGroups().all().get(30, TimeUnit.SECONDS);
                check(groups.stream().anyMatch(g -> g.groupId().equals(group)), "group not listed: " + groups);
                return groups.size() + " group(s)";
            });
            scenario("admin.describeConsumerGroups", () -> {
                ConsumerGroupDescription d = admin.describeConsumerGroups(List.of(group)).all()
                        .get(30, TimeUnit.SECONDS).get(group);
                return "state " + d.groupState() + ", " + d.members().size() + " member(s)";
            });
            scenario("admin.listConsumerGroupOffsets", () -> {
                Map<TopicPartition, OffsetAndMetadata> o = admin.listConsumerGroupOffsets(group)
                        .partitionsToOffsetAndMetadata().get(30, TimeUnit.SECONDS);
                long total = o.values().stream().mapToLong(OffsetAndMetadata::offset).sum();
                check(total == MESSAGES, "committed offsets sum to " + total);
                return "committed offsets sum to " + total;
            });
            scenario("consumer.assign-and-seek", () -> {
                Properties p = consumerProps(null);
                try (KafkaConsumer<String, String> c = new KafkaConsumer<>(p)) {
                    TopicPartition tp = new TopicPartition(topic, 0);
                    c.assign(List.of(tp));
                    long end = c.endOffsets(List.of(tp)).get(tp);
                    check(end >= 2, "partition 0 holds " + end);
                    long from = end / 2;
                    c.seek(tp, from);
                    long first = -1;
                    long deadline = System.nanoTime() + WAIT.toNanos();
                    while (first < 0 && System.nanoTime() < deadline) {
                        for (ConsumerRecord<String, String> r : c.poll(Duration.ofMillis(500))) {
                            first = r.offset();
                            break;
                        }
                    }
                    check(first == from, "seek to " + from + " read " + first);
                    c.seekToBeginning(List.of(tp));
                    check(c.position(tp) == 0, "seekToBeginning position " + c.position(tp));
                    return "seek to " + from + " read " + first;
                }
            });
            scenario("consumer.static-membership", () -> staticMembership(admin));
            scenario("admin.deleteTopics", () -> {
                admin.deleteTopics(List.of(topic)).all().get(30, TimeUnit.SECONDS);
                long deadline = System.nanoTime() + WAIT.toNanos();
                while (System.nanoTime() < deadline) {
                    if (!admin.listTopics().names().get(30, TimeUnit.SECONDS).contains(topic)) {
                        return "";
                    }
                    Thread.sleep(200);
                }
                throw new AssertionError("still listed");
            });
        }
    }

    private Properties consumerProps(String groupId) {
        Properties p = common();
        p.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        p.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        p.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        if (groupId != null) {
            p.put(ConsumerConfig.GROUP_ID_CONFIG, groupId);
        }
        return p;
    }

    /** A consumer polling on its own thread until stopped; what it holds, and how often it was assigned. */
    private final class Polling implements AutoCloseable {
        private final AtomicBoolean stop = new AtomicBoolean(false);
        private final java.util.concurrent.atomic.AtomicInteger assignedCalls = new java.util.concurrent.atomic.AtomicInteger();
        private volatile Set<Integer> held = Set.of();
        private final List<String> events = java.util.Collections.synchronizedList(new ArrayList<>());
        private volatile Throwable failed;
        private final Thread thread;

        Polling(String groupId, String instance, String topicName) {
            Properties p = consumerProps(groupId);
            p.put(ConsumerConfig.GROUP_INSTANCE_ID_CONFIG, instance);
            p.put(ConsumerConfig.SESSION_TIMEOUT_MS_CONFIG, "30000");
            thread = new Thread(() -> {
                try (KafkaConsumer<String, String> c = new KafkaConsumer<>(p)) {
                    c.subscribe(List.of(topicName), new org.apache.kafka.clients.consumer.ConsumerRebalanceListener() {
                        @Override
                        public void onPartitionsRevoked(Collection<TopicPartition> partitions) {
                            events.add(java.time.Instant.now() + " revoked " + partitions);
                        }

                        @Override
                        public void onPartitionsAssigned(Collection<TopicPartition> partitions) {
                            assignedCalls.incrementAndGet();
                            events.add(java.time.Instant.now() + " assigned " + partitions);
                            Set<Integer> mine = new HashSet<>();
                            for (TopicPartition tp : partitions) {
                                mine.add(tp.partition());
                            }
                            held = mine;
                        }
                    });
                    while (!stop.get()) {
                        c.poll(Duration.ofMillis(100));
                    }
                } catch (Throwable e) {
                    failed = e;
                }
            }, "static-" + instance);
            thread.start();
        }

        Set<Integer> held() {
            return held;
        }

        int assignedCalls() {
            return assignedCalls.get();
        }

        /** Closes the consumer; a static member sends no LeaveGroup (KIP-345). */
        @Override
        public void close() throws InterruptedException {
            stop.set(true);
            thread.join(30_000);
            if (failed != null) {
                throw new AssertionError("consumer failed", failed);
            }
        }
    }

    private static void waitFor(String what, java.util.function.BooleanSupplier ok) throws InterruptedException {
        long deadline = System.nanoTime() + Duration.ofSeconds(60).toNanos();
        while (!ok.getAsBoolean()) {
            if (System.nanoTime() > deadline) {
                throw new AssertionError("timed out waiting for " + what);
            }
            Thread.sleep(100);
        }
    }

    /**
     * KIP-345: two static members share 4 partitions; one is closed (no LeaveGroup) and a new
     * process with the same group.instance.id starts within the session timeout: it gets the
     * same partitions back, and the other member sees no rebalance. Then the same for the
     * group's leader, which JoinGroup v9 lets skip the assignment (KIP-814).
     */
    private String staticMembership(Admin admin) throws Exception {
        String t = topic + "-static";
        String g = t + "-group";
        admin.createTopics(List.of(new NewTopic(t, 4, (short) 1))).all().get(30, TimeUnit.SECONDS);
        List<Polling> open = new ArrayList<>();
        try {
            // b first, alone, so that it leads the group.
            Polling b = new Polling(g, "b", t);
            open.add(b);
            waitFor("the first member assigned", () -> b.held().size() == 4);
            Polling a = new Polling(g, "a", t);
            open.add(a);
            waitFor("both members assigned", () -> !a.held().isEmpty() && !b.held().isEmpty()
                    && a.held().size() + b.held().size() == 4);
            // Settled: nobody reassigned for 3 s (a leader may rejoin once after its first
            // assignment, when its metadata of the new topic catches up).
            long deadline = System.nanoTime() + Duration.ofSeconds(60).toNanos();
            while (true) {
                int calls = a.assignedCalls() + b.assignedCalls();
                Thread.sleep(3000);
                if (calls == a.assignedCalls() + b.assignedCalls()) {
                    break;
                }
                check(System.nanoTime() < deadline, "the static group never settled");
            }
            Set<Integer> aBefore = a.held();
            int bCalls = b.assignedCalls();
            open.remove(a);
            a.close();
            Polling a2 = new Polling(g, "a", t);
            open.add(a2);
            waitFor("the restarted member assigned", () -> !a2.held().isEmpty());
            Thread.sleep(3000);
            check(a2.held().equals(aBefore), "restarted member got " + a2.held() + ", had " + aBefore);
            check(b.assignedCalls() == bCalls, "the leader was reassigned "
                    + (b.assignedCalls() - bCalls) + " more time(s): " + b.events);

            Set<Integer> bBefore = b.held();
            int a2Calls = a2.assignedCalls();
            open.remove(b);
            b.close();
            Polling b2 = new Polling(g, "b", t);
            open.add(b2);
            waitFor("the restarted leader assigned", () -> !b2.held().isEmpty());
            Thread.sleep(3000);
            check(b2.held().equals(bBefore), "restarted leader got " + b2.held() + ", had " + bBefore);
            check(a2.assignedCalls() == a2Calls, "the other member was reassigned when the leader restarted "
                    + (a2.assignedCalls() - a2Calls) + " more time(s): " + a2.events);

            ConsumerGroupDescription d = admin.describeConsumerGroups(List.of(g)).all()
                    .get(30, TimeUnit.SECONDS).get(g);
            long statics = d.members().stream().filter(m -> m.groupInstanceId().isPresent()).count();
            check(statics == 2, "static members described: " + statics);
            return "member kept " + aBefore + ", leader kept " + bBefore + ", no other reassignment, state "
                    + d.groupState();
        } finally {
            for (Polling p : open) {
                p.close();
            }
        }
    }

    /** Three consumers in one group share the partitions, read every message once, commit. */
    private String consumeAsGroup() throws Exception {
        Set<String> seen = ConcurrentHashMap.newKeySet();
        Map<String, Set<Integer>> assigned = new ConcurrentHashMap<>();
        AtomicBoolean done = new AtomicBoolean(false);
        ExecutorService pool = Executors.newFixedThreadPool(3);
        List<Future<Integer>> members = new ArrayList<>();
        for (int m = 0; m < 3; m++) {
            String name = "member-" + m;
            members.add(pool.submit(() -> {
                int read = 0;
                try (KafkaConsumer<String, String> c = new KafkaConsumer<>(consumerProps(group))) {
                    c.subscribe(List.of(topic));
                    long deadline = System.nanoTime() + Duration.ofSeconds(60).toNanos();
                    while (!done.get() && System.nanoTime() < deadline) {
                        for (ConsumerRecord<String, String> r : c.poll(Duration.ofMillis(200))) {
                            if (!seen.add(r.value())) {
                                throw new AssertionError("read twice: " + r.value());
                            }
                            read++;
                        }
                        Set<Integer> mine = new HashSet<>();
                        for (TopicPartition tp : c.assignment()) {
                            mine.add(tp.partition());
                        }
                        assigned.put(name, mine);
                        c.commitSync();
                        if (seen.size() >= MESSAGES) {
                            done.set(true);
                        }
                    }
                    c.commitSync();
                }
                return read;
            }));
        }
        List<Integer> counts = new ArrayList<>();
        for (Future<Integer> f : members) {
            counts.add(f.get(90, TimeUnit.SECONDS));
        }
        pool.shutdown();
        check(seen.size() == MESSAGES, "read " + seen.size() + " of " + MESSAGES);
        return "read per member " + counts + ", assignments " + assigned;
    }
}
