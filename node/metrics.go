package node

import (
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the node's own Prometheus series, beside the ones libp2p registers: connected
// peers, open streams per protocol, and pubsub messages by topic and outcome. It is also the
// pubsub tracer that counts them.
type metrics struct {
	messages *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, h host.Host) *metrics {
	m := &metrics{
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "virtuoso_pubsub_messages_total",
			Help: "Pubsub messages seen, by topic and outcome (delivered; rejected, which counts ignored ones too; duplicate).",
		}, []string{"topic", "outcome"}),
	}
	reg.MustRegister(m.messages,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "virtuoso_peers",
			Help: "Peers with an open connection.",
		}, func() float64 { return float64(len(h.Network().Peers())) }),
		&streamCollector{h: h, desc: prometheus.NewDesc("virtuoso_streams",
			"Open streams, by protocol and direction.", []string{"protocol", "direction"}, nil)},
	)
	return m
}

// streamCollector counts open streams at scrape time, so the figure is never stale.
type streamCollector struct {
	h    host.Host
	desc *prometheus.Desc
}

func (c *streamCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *streamCollector) Collect(ch chan<- prometheus.Metric) {
	type key struct {
		proto protocol.ID
		dir   string
	}
	counts := map[key]int{}
	for _, conn := range c.h.Network().Conns() {
		for _, s := range conn.GetStreams() {
			counts[key{s.Protocol(), s.Stat().Direction.String()}]++
		}
	}
	for k, v := range counts {
		proto := string(k.proto)
		if proto == "" {
			proto = "negotiating"
		}
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(v), proto, k.dir)
	}
}

func (m *metrics) count(topic *string, outcome string) {
	t := ""
	if topic != nil {
		t = *topic
	}
	m.messages.WithLabelValues(t, outcome).Inc()
}

// The pubsub.RawTracer methods; only message outcomes are counted.
func (m *metrics) OnNewOutboundStream(peer.ID, protocol.ID)             {}
func (m *metrics) OnClosedOutboundStream(peer.ID)                       {}
func (m *metrics) SendRPCCompleted(*pubsub.RPC, peer.ID, time.Duration) {}
func (m *metrics) Join(string)                                          {}
func (m *metrics) Leave(string)                                         {}
func (m *metrics) Graft(peer.ID, string)                                {}
func (m *metrics) Prune(peer.ID, string)                                {}
func (m *metrics) ValidateMessage(*pubsub.Message)                      {}
func (m *metrics) RecvRPC(*pubsub.RPC)                                  {}
func (m *metrics) SendRPC(*pubsub.RPC, peer.ID)                         {}
func (m *metrics) DropRPC(*pubsub.RPC, peer.ID)                         {}
func (m *metrics) UndeliverableMessage(*pubsub.Message)                 {}
func (m *metrics) ThrottlePeer(peer.ID)                                 {}
func (m *metrics) DeliverMessage(msg *pubsub.Message)                   { m.count(msg.Topic, "delivered") }
func (m *metrics) RejectMessage(msg *pubsub.Message, _ string)          { m.count(msg.Topic, "rejected") }
func (m *metrics) DuplicateMessage(msg *pubsub.Message)                 { m.count(msg.Topic, "duplicate") }
