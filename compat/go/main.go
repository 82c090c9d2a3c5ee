// The Go clients against one broker: franz-go (kgo, kadm) and Sarama, each producing,
// consuming in a group with commits, and administering topics and groups. Each scenario
// prints one line, "PASS name (detail)" or "FAIL name: why"; the exit status is the number
// of failures. Usage: compat-go BOOTSTRAP
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

const (
	messages   = 300
	partitions = 3
)

var failures int

func scenario(name string, body func() (string, error)) {
	detail, err := body()
	if err != nil {
		failures++
		fmt.Printf("FAIL %s: %v\n", name, err)
		return
	}
	fmt.Printf("PASS %s (%s)\n", name, detail)
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: compat-go BOOTSTRAP")
		os.Exit(2)
	}
	bootstrap := os.Args[1]
	stamp := time.Now().UnixNano()
	franz(bootstrap, fmt.Sprintf("go-franz-%d", stamp))
	saramaScenarios(bootstrap, fmt.Sprintf("go-sarama-%d", stamp))
	os.Exit(failures)
}

func franz(bootstrap, topic string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin, err := kgo.NewClient(kgo.SeedBrokers(bootstrap))
	if err != nil {
		scenario("franz-go.client", func() (string, error) { return "", err })
		return
	}
	defer admin.Close()
	adm := kadm.NewClient(admin)
	group := topic + "-group"

	scenario("franz-go.kadm.CreateTopics", func() (string, error) {
		r, err := adm.CreateTopic(ctx, partitions, 1, nil, topic)
		if err == nil {
			err = r.Err
		}
		return topic, err
	})
	scenario("franz-go.kadm.Metadata", func() (string, error) {
		m, err := adm.Metadata(ctx, topic)
		if err != nil {
			return "", err
		}
		t, ok := m.Topics[topic]
		if !ok || len(t.Partitions) != partitions {
			return "", fmt.Errorf("topic %s: %+v", topic, t)
		}
		return fmt.Sprintf("%d broker(s), %d partitions", len(m.Brokers), len(t.Partitions)), nil
	})
	scenario("franz-go.kgo.produce-idempotent", func() (string, error) {
		cl, err := kgo.NewClient(kgo.SeedBrokers(bootstrap), kgo.DefaultProduceTopic(topic))
		if err != nil {
			return "", err
		}
		defer cl.Close()
		var records []*kgo.Record
		for i := 0; i < messages; i++ {
			records = append(records, &kgo.Record{Key: []byte(fmt.Sprintf("k%d", i%7)), Value: []byte(fmt.Sprintf("v%d", i))})
		}
		if err := cl.ProduceSync(ctx, records...).FirstErr(); err != nil {
			return "", err
		}
		return fmt.Sprintf("%d acknowledged", messages), nil
	})
	scenario("franz-go.kadm.ListEndOffsets", func() (string, error) {
		ends, err := adm.ListEndOffsets(ctx, topic)
		if err != nil {
			return "", err
		}
		var total int64
		ends.Each(func(o kadm.ListedOffset) { total += o.Offset })
		if total != messages {
			return "", fmt.Errorf("end offsets sum to %d", total)
		}
		return fmt.Sprintf("end offsets sum to %d", total), nil
	})
	scenario("franz-go.kgo.consumer-group", func() (string, error) {
		cl, err := kgo.NewClient(kgo.SeedBrokers(bootstrap), kgo.ConsumerGroup(group),
			kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
			kgo.DisableAutoCommit())
		if err != nil {
			return "", err
		}
		defer cl.Close()
		seen := map[string]bool{}
		for len(seen) < messages {
			fetches := cl.PollFetches(ctx)
			if ctx.Err() != nil {
				return "", fmt.Errorf("read %d of %d", len(seen), messages)
			}
			if errs := fetches.Errors(); len(errs) > 0 {
				return "", errs[0].Err
			}
			fetches.EachRecord(func(r *kgo.Record) { seen[string(r.Value)] = true })
			if err := cl.CommitUncommittedOffsets(ctx); err != nil {
				return "", err
			}
		}
		return fmt.Sprintf("read %d, committed", len(seen)), nil
	})
	scenario("franz-go.kadm.groups", func() (string, error) {
		listed, err := adm.ListGroups(ctx)
		if err != nil {
			return "", err
		}
		if _, ok := listed[group]; !ok {
			return "", fmt.Errorf("group not listed: %v", listed.Groups())
		}
		described, err := adm.DescribeGroups(ctx, group)
		if err != nil {
			return "", err
		}
		offsets, err := adm.FetchOffsets(ctx, group)
		if err != nil {
			return "", err
		}
		var total int64
		offsets.Each(func(o kadm.OffsetResponse) { total += o.At })
		if total != messages {
			return "", fmt.Errorf("committed offsets sum to %d", total)
		}
		return fmt.Sprintf("state %s, committed offsets sum to %d", described[group].State, total), nil
	})
	scenario("franz-go.kadm.DeleteTopics", func() (string, error) {
		r, err := adm.DeleteTopics(ctx, topic)
		if err == nil {
			err = r.Error()
		}
		return "", err
	})
}

type groupHandler struct {
	mu   sync.Mutex
	seen map[string]bool
	done chan struct{}
	once sync.Once
}

func (h *groupHandler) Setup(sarama.ConsumerGroupSession) error   { return nil }
func (h *groupHandler) Cleanup(sarama.ConsumerGroupSession) error { return nil }
func (h *groupHandler) ConsumeClaim(s sarama.ConsumerGroupSession, c sarama.ConsumerGroupClaim) error {
	for m := range c.Messages() {
		h.mu.Lock()
		h.seen[string(m.Value)] = true
		n := len(h.seen)
		h.mu.Unlock()
		s.MarkMessage(m, "")
		if n >= messages {
			s.Commit()
			h.once.Do(func() { close(h.done) })
		}
	}
	return nil
}

func saramaScenarios(bootstrap, topic string) {
	config := sarama.NewConfig()
	config.Version = sarama.V2_1_0_0
	config.Producer.Return.Successes = true
	config.Producer.RequiredAcks = sarama.WaitForAll
	config.Producer.Idempotent = true
	config.Net.MaxOpenRequests = 1
	config.Consumer.Offsets.Initial = sarama.OffsetOldest
	config.Consumer.Offsets.AutoCommit.Enable = false
	group := topic + "-group"
	brokers := []string{bootstrap}

	admin, err := sarama.NewClusterAdmin(brokers, config)
	if err != nil {
		scenario("sarama.admin", func() (string, error) { return "", err })
		return
	}
	defer admin.Close()
	scenario("sarama.admin.CreateTopic", func() (string, error) {
		return topic, admin.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: partitions, ReplicationFactor: 1}, false)
	})
	scenario("sarama.admin.DescribeTopics", func() (string, error) {
		meta, err := admin.DescribeTopics([]string{topic})
		if err != nil {
			return "", err
		}
		if len(meta) != 1 || len(meta[0].Partitions) != partitions {
			return "", fmt.Errorf("described %+v", meta)
		}
		return fmt.Sprintf("%d partitions", len(meta[0].Partitions)), nil
	})
	scenario("sarama.SyncProducer-idempotent", func() (string, error) {
		p, err := sarama.NewSyncProducer(brokers, config)
		if err != nil {
			return "", err
		}
		defer p.Close()
		var batch []*sarama.ProducerMessage
		for i := 0; i < messages; i++ {
			batch = append(batch, &sarama.ProducerMessage{Topic: topic, Key: sarama.StringEncoder(fmt.Sprintf("k%d", i%7)), Value: sarama.StringEncoder(fmt.Sprintf("v%d", i))})
		}
		if err := p.SendMessages(batch); err != nil {
			return "", err
		}
		return fmt.Sprintf("%d acknowledged", messages), nil
	})
	scenario("sarama.ConsumerGroup", func() (string, error) {
		g, err := sarama.NewConsumerGroup(brokers, group, config)
		if err != nil {
			return "", err
		}
		defer g.Close()
		h := &groupHandler{seen: map[string]bool{}, done: make(chan struct{})}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		go func() {
			for ctx.Err() == nil {
				if err := g.Consume(ctx, []string{topic}, h); err != nil && !errors.Is(err, sarama.ErrClosedConsumerGroup) {
					return
				}
			}
		}()
		select {
		case <-h.done:
		case <-ctx.Done():
			h.mu.Lock()
			defer h.mu.Unlock()
			return "", fmt.Errorf("read %d of %d", len(h.seen), messages)
		}
		cancel()
		return fmt.Sprintf("read %d, committed", messages), nil
	})
	scenario("sarama.admin.groups", func() (string, error) {
		listed, err := admin.ListConsumerGroups()
		if err != nil {
			return "", err
		}
		if _, ok := listed[group]; !ok {
			return "", fmt.Errorf("group not listed: %v", listed)
		}
		offsets, err := admin.ListConsumerGroupOffsets(group, nil)
		if err != nil {
			return "", err
		}
		var total int64
		for _, ps := range offsets.Blocks {
			for _, b := range ps {
				total += b.Offset
			}
		}
		if total != messages {
			return "", fmt.Errorf("committed offsets sum to %d", total)
		}
		described, err := admin.DescribeConsumerGroups([]string{group})
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("state %s, committed offsets sum to %d", described[0].State, total), nil
	})
	scenario("sarama.admin.DeleteTopic", func() (string, error) {
		return "", admin.DeleteTopic(topic)
	})
}
