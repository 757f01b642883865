// Package node is one participant of the Virtuoso marketplace: a libp2p host with a persistent
// ed25519 identity, kad-dht under the /virtuoso prefix, gossipsub, a badger datastore with a typed
// key space, the node's configuration, role wiring (provider, coordinator), the local HTTP API
// that the CLI and the web UI talk to, the typed event stream its services publish on (Events)
// and the event log that keeps what happened, in order (EventLog).
//
// Every other package plugs into a *Node: it registers stream handlers on the host, joins pubsub
// topics through Node.Topic (once per topic, with a validator), and keeps its state under its own
// prefix of the Store. No package opens its own database.
package node
