// Package vmmp is the Virtual Machine Migration Protocol (VMMP/1.0: QUERY, RESULTS, REQ,
// HEARTBEAT, RESP) over libp2p streams: the migration agent that initiates a move, the server on
// the destination, and the transfer of a VM's files between providers.
//
// # Wire format
//
// Messages travel on streams of ProtocolID, one per line, in the report's text form (§7.2.1),
// with the report's IP and port replaced by a peer ID and one multiaddr (without /p2p/):
//
//	<VMMP 1.0 QUERY VM_ID METHODS>
//	<VMMP 1.0 RESULTS VM_ID N METHOD_1 … METHOD_N>
//	<VMMP 1.0 REQ VM_ID VERSION ORIGIN_PEER ORIGIN_ADDR AGENT_PEER AGENT_ADDR METHOD>
//	<VMMP 1.0 HEARTBEAT VM_ID [STEP DONE TOTAL WIRE]>
//	<VMMP 1.0 RESP VM_ID VERSION' SUCCESS|FAIL [CODE]>
//
// VM_ID is the VM's UUID in its canonical lower-case form; VERSION a decimal without leading
// zeros; methods and codes are tokens of lower-case letters, digits, '_' and '-' (at most 32
// bytes; at most 16 methods). CODE, on a FAIL only, names why (an error code such as
// "no_capacity"). A HEARTBEAT may carry the destination's progress: its step (a token: admit,
// ask, copy, adopt), the image bytes settled so far of the total, and the bytes on the wire so
// far, all decimals; the report's bare HEARTBEAT is still one. Fields are separated by single spaces and a line ends with '\n'; a message
// is at most MaxMessageBytes. Anything else is refused with ErrMalformed, so that one message
// has exactly one encoding.
package vmmp
