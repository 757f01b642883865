// Package vmmp is the Virtual Machine Migration Protocol (VMMP/1.0: QUERY, RESULTS, REQ,
// HEARTBEAT, RESP) over libp2p streams: the migration agent that initiates a move, the server on
// the destination, and the transfer of a VM's files between providers.
package vmmp
