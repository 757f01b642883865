// Package market is the marketplace (report §5, §6.1, §6.3): provider machines and the terms
// they are sold under, signed offers gossiped on /virtuoso/offers/1 and the offer book every
// node keeps, the configurations catalog, search and ranking, market averages, storing a VM
// on a provider under a signed lease, and controlling it afterwards.
//
// # Services
//
// Three node.Services, each with its own state, built by internal/daemon in this order:
//
//   - the Book, on every node: the offer book (persisted under market/book/), the catch-up
//     query, the catalog (standard configurations, the preconfigured ones of the images
//     providers advertise, the owner's own edited ones under market/configs/), search, and the
//     market averages (recomputed every minute, history under market/averages/);
//   - the Buyer, on every node, over the Book: its leases (market/buyer/), store, control,
//     the console tunnel, and the providers' notices;
//   - the Provider, on a provider node, over the Book and a Hypervisor (vm.Manager): machines
//     and lease records (market/provider/), one offer per machine, and the store, control and
//     console handlers. A node that does not sell runs NotSelling in its place.
//
// The services publish on the node's event stream (node.Events): LeaseCreated, LeaseEnded,
// MachineChanged and VMChanged, next to the vm.StatusChanged of the provider's Manager. Each
// is node.Loggable: the node's event log keeps them, in order, with a line a user reads.
//
// # Money and prices
//
// Money is an int64 number of micro-units. A machine sells each resource in chunks (speed in
// bogomips, memory and storage in MB) at a price per chunk per period: speed and memory per
// running period, storage per storage period. A configuration is charged whole chunks,
// ⌈amount/chunk⌉ of each, so prices are exact: Terms.Quote. Search ranks by the cost of a usage
// profile (Quote.Cost): storage charged at the start of every storage period of the stay,
// running at the start of every running period of accumulated running time. Market averages
// convert prices pro rata per hour and per day, rounded to the nearest micro-unit; they are
// guidance and are never charged.
//
// # Wire formats
//
// Offers and leases travel as envelopes: a 3-byte magic (version included), then each field as
// an unsigned varint length (minimal encoding) and its bytes, nothing after the last field.
//
//	offer envelope  'V' 'O' 0x01 | len body | body | len sig | sig                 ≤ 16 KiB
//	lease envelope  'V' 'L' 0x01 | len body | body | len buyer sig | buyer sig |
//	                len provider sig | provider sig (empty in a proposal)         ≤ 16 KiB
//
// The body is the JSON of Offer or Lease (≤ 12 KiB). Unknown fields are ignored, so that a
// later release can add optional ones: the signature is over the body's exact bytes, which
// are kept and forwarded as they came. A change older nodes must not misread takes a new
// version byte; an envelope of a version this node does not read is ErrUnknownVersion. Signatures
// are ed25519 by the node's libp2p key over a domain string and the body:
// "virtuoso/offer/1\n"+body by the offer's provider, "virtuoso/lease/1\n"+body by the lease's
// buyer and provider; the key is taken from the peer ID named in the body.
//
// On the offers topic a message's data is one offer envelope. The topic validator decodes it
// and verifies the signature, checks that the gossip message's author (From, itself signed
// under gossipsub's StrictSign) is the offer's provider, and checks every field's range:
// failures are rejected, which counts against the forwarding peer in gossipsub's peer score
// (a few rejects graylist it, whatever its identity; invalid offers in a catch-up answer count
// in the application's part of the score). Offers that are expired, dated more than MaxClockSkew ahead, not
// newer (Seq) than the book's offer of the same machine, or of a newer envelope version are
// ignored: not forwarded, not penalised. A withdrawn offer (machine removed) replaces the machine's offer until it expires.
//
// Streams carry frames: an unsigned varint length, then that many bytes, at most 64 KiB. One
// request frame, one answer frame, JSON objects (unknown fields ignored). Every answer has an
// "error" member ({"code", "message"}) when the request failed; a request that cannot be read
// is answered {"error": {"code": "malformed", ...}}. Codes map to this package's sentinels and
// the vm package's (RemoteError matches them with errors.Is); the local API answers errors
// with the same codes.
//
//	/virtuoso/offers-query/1.0.0  {"max"} → frames of offer envelopes, newest first (the
//	                              answering node's own first, at most 4096), then an empty frame
//	/virtuoso/store/1.0.0         {"lease": proposal envelope} → {"lease": countersigned
//	                              envelope, "state": {"status", "version"}}
//	/virtuoso/vm/1.0.0            {"vm", "action": startmachine|stopmachine|suspendmachine|
//	                              resumemachine|viewmachine|deletemachine (vm.Action; absent
//	                              asks for the status), "fresh" (resume from the disk)} →
//	                              {"state", "health", "lease" (status), "password" (console)}
//	/virtuoso/console/1.0.0       {"vm"} → {} then raw VNC bytes both ways
//	/virtuoso/notice/1.0.0        {"lease", "vm", "reason"} (provider to buyer: lease ended)
//
// # Storing
//
// The buyer proposes a lease (a new VM ID, the configuration, the terms it accepts and their
// quote, its time) and signs it. The provider refuses it unless the requester is the buyer, the
// time is within MaxClockSkew, and the terms are the machine's current ones (ErrStale
// otherwise); it then reserves the capacity and records the pending lease in one store
// transaction, so two buyers racing for the last capacity cannot both pass; creates the VM
// through the vm.Manager (a preconfigured one from a copy of the image); countersigns and
// answers. A failure at any step releases the reservation and deletes what was created. A
// buyer that gets no clear answer keeps the store pending and asks the provider for the VM's
// status (which carries the countersigned lease) until the provider answers either way.
//
// Control requests are executed only for the lease's buyer (the stream's authenticated
// peer) and only if the VM's status allows the action: the provider's vm.Manager checks, the
// buyer does not. The console is a
// tunnel: the provider opens a session with a one-time VNC password and pipes console
// streams to its VNC server on loopback; the buyer's node listens on a loopback port of its
// own and opens one console stream per viewer connection.
package market
