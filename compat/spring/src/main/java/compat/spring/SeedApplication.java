package compat.spring;

import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.springframework.boot.CommandLineRunner;
import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.context.ConfigurableApplicationContext;
import org.springframework.kafka.annotation.KafkaListener;
import org.springframework.kafka.core.KafkaTemplate;
import org.springframework.stereotype.Service;

/**
 * Seed 002: a KafkaTemplate publishes to the topic "test", and a @KafkaListener in the
 * group "testconsume" receives it. Prints "PASS spring.template-to-listener (...)" and
 * exits 0 once the listener has the message, or "FAIL ..." and exits 1 after 60 s.
 */
@SpringBootApplication
public class SeedApplication {
    static final String TOPIC_NAME = "test";
    static final String MESSAGE = "이거 돌아가는거 맞는건가";
    static final CountDownLatch RECEIVED = new CountDownLatch(1);
    static volatile String seen = "";

    public static void main(String[] args) throws Exception {
        ConfigurableApplicationContext context = SpringApplication.run(SeedApplication.class, args);
        boolean ok = RECEIVED.await(60, TimeUnit.SECONDS);
        System.out.println((ok ? "PASS" : "FAIL") + " spring.template-to-listener (" + seen + ")");
        System.out.flush();
        int code = SpringApplication.exit(context, () -> ok ? 0 : 1);
        System.exit(code);
    }

    /** The seed's controller sent on a POST; here the application sends once started. */
    @Service
    static class Sender implements CommandLineRunner {
        private final KafkaTemplate<String, String> kafkaTemplate;

        Sender(KafkaTemplate<String, String> kafkaTemplate) {
            this.kafkaTemplate = kafkaTemplate;
        }

        @Override
        public void run(String... args) throws Exception {
            kafkaTemplate.send(TOPIC_NAME, MESSAGE).get(30, TimeUnit.SECONDS);
        }
    }

    @Service
    static class TestConsumer {
        @KafkaListener(topics = "test")
        public void messageListener(ConsumerRecord<String, String> record) {
            System.out.println("### topic: " + record.topic() + ", value: " + record.value()
                    + ", offset: " + record.offset());
            if (MESSAGE.equals(record.value())) {
                seen = "topic " + record.topic() + ", offset " + record.offset() + ", group testconsume";
                RECEIVED.countDown();
            }
        }
    }
}
