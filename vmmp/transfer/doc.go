// Package transfer moves a VM's files (disk images, state files) from a source node to a
// destination node over one libp2p stream, sending only what the destination lacks. It is
// the data plane of VMMP migration: the destination pulls (Fetch), the source serves
// (Server) what its authorisation hook allows.
//
// # Methods
//
// blockdiff (the default) cuts every file into fixed-size blocks (64 KiB unless configured)
// and hashes each with BLAKE3. The destination sends the signature of whatever version of
// the files it holds; the source answers, block by block in order, with one of: reuse
// (you have it), hole (all zeros: kept sparse), data (the block, zstd-compressed when that
// shrinks it), patch (only the 4 KiB sub-blocks that differ, found by comparing XXH3
// sub-block hashes, for scattered small writes), or copy (sub-blocks the destination holds
// elsewhere in its version of the file, named by number, and only the rest sent: content a
// guest copied or moved, such as a package install's files, found through an index of the
// destination's sub-block hashes). full sends every byte, like scp: the baseline.
//
// Both sides hash on a pool of workers in batches that flow to the stream in file order, so
// hashing overlaps the network instead of preceding it; the source builds DATA frames in
// the buffers it reads blocks into, the destination reads runs of blocks into one aligned
// buffer and stages them with one direct write.
//
// The destination verifies every received block against its hash before it stages it, and
// the whole image against the image hash (BLAKE3 over the block hashes, see ImageHash)
// before it commits, so verification needs no second pass; a failed transfer never touches
// the version it already had. The stage (dstDir/.vmmp-transfer/NAME.stage) holds only the
// pages received, at their offsets. The commit is a redo log: the plan for every file of the
// request goes into one record made durable by a rename; then each file's stage is either
// completed from the old version and renamed over it, or copied into it in place,
// whichever copies less (a few changed pages of a large image are copied, not the image).
// A crash after the record is finished by Recover, which every Fetch runs first.
//
// Signatures are cached next to the files they describe (.vmmp-transfer/NAME.sig), trusted
// while the file's identity (device, inode, size, mtime, ctime) is unchanged and a sample of
// blocks still matches, so an unchanged image is not re-read; a stale cache still saves the
// strong hashing of blocks whose fast sub-block hashes match. A ChangeTracker (a hypervisor
// dirty bitmap, vm/qemu's) lets a changed image be re-read only where it changed: both sides
// checkpoint it when they store a file's signature (the source after a send, the destination
// after a commit), and a commit drops a target's signature before it writes the target, so
// no signature survives content it does not describe. A broken transfer keeps its verified
// staged pages and the next Fetch of the same files resumes from them.
//
// # Wire format, version 1
//
// Both directions start with the preamble "VMTX" followed by the version byte 0x01. After
// it, everything is a frame: a type byte, a big-endian uint32 payload length, the payload.
// Every frame type has a size cap (64 bytes for the small control frames, 64 KiB for the
// request and accept, 1 MiB for a signature chunk, the largest block size plus 1 KiB for
// block frames); a longer length, an unknown type or a frame out of order is a protocol
// error that ends the stream. Integers are big-endian unless noted; "uvarint" is the
// unsigned varint of encoding/binary; a string is a uvarint length and its bytes.
//
// Destination to source:
//
//	0x01 REQUEST  method u8 (1 blockdiff, 2 full) | block size u32 | flags u8 (bit 0:
//	              zstd allowed) | vm string (<= 256) | files uvarint (1..64) | names string (<= 255)
//	0x03 BASIS    file uvarint | basis size u64 | flags u8 (bit 0: identical, the basis has the
//	              image hash the source announced and no SIG frames follow; bit 1: copies, the
//	              signature describes the basis file alone, so COPY frames may name its pages;
//	              offered for a basis of at most 16 GiB whose signature was cached)
//	0x02 SIG      file uvarint | first block uvarint | count uvarint | count entries of
//	              strong hash [32] and block size/4096 sub-block hashes (u64, little endian)
//	0x05 DONE     code u8 (0: committed) | message string (<= 1024)
//
// Source to destination:
//
//	0x10 ACCEPT   files uvarint | per file: size u64 | permission bits u32 | mtime ns i64 |
//	              image hash [32] (zero when not known before sending)
//	0x11 FILE     file uvarint (files are sent in order)
//	0x12 REUSE    count uvarint: the next count blocks are the destination's own
//	0x13 HOLE     count uvarint: the next count blocks are zeros
//	0x14 DATA     flags u8 (bit 0: zstd) | strong hash [32] | the block
//	0x15 PATCH    flags u8 (bit 0: zstd) | strong hash [32] | mask (1 bit per sub-block,
//	              LSB first) | the marked sub-blocks, concatenated
//	0x16 END      image hash [32]
//	0x17 COPY     flags u8 (bit 0: zstd) | strong hash [32] | mask (as PATCH: the sub-blocks
//	              carried) | per sub-block not carried, in order, the basis sub-block holding
//	              its content: a varint (zigzag) of its number minus where the previous one
//	              leads (the same offset for the first; the next page after a reference) |
//	              the marked sub-blocks, concatenated. Only full 4 KiB sub-blocks of a basis
//	              sent with the copies flag may be named.
//
// Either side may send 0x0f ERROR (code u8 | message string) and close. Codes: 1 protocol,
// 2 refused, 3 source changed, 4 internal, 5 corrupt, 6 canceled.
//
// A session: the destination sends REQUEST; the source calls the hook and answers ACCEPT
// or ERROR. The destination then sends, for every file in order, BASIS and the SIG frames
// covering every block of that basis; meanwhile the source sends, for every file in order,
// FILE, one instruction per block (runs merged) and END. Having committed, the destination
// sends DONE.
package transfer
