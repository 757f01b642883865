// Package disk holds the disk-image helpers of the vm layer that need no hypervisor tools.
//
// Its main part is the VMware plain disk of the Virtuoso report (§6.2.5): a text descriptor plus
// a set of preallocated chunk files, sized by a cylinder/head/sector geometry. A plain disk for a
// requested size in MB is laid out like this:
//
//	DRIVETYPE scsi
//	#vm| VERSION 2
//	#vm| TOOLSVERSION 0
//	CYLINDERS 382
//	HEADS 255
//	SECTORS 63
//	#vm| CAPACITY 6136830
//	ACCESS "test1.dat" 0 4176900
//	ACCESS "test2.dat" 4176900 1959930
//
// CAPACITY and the ACCESS offsets and lengths count 512-byte sectors. Each ACCESS line names one
// chunk file, relative to the descriptor's directory, with its first sector and its length.
// Chunks start and end on cylinder boundaries and never reach 2 GiB (see [ChunkCylinders]).
// Descriptors can arrive from other machines during a migration, so [ParseDescriptor] treats
// them as untrusted: the input is capped at [MaxDescriptorSize], chunk names cannot leave the
// descriptor's directory, and the extents must tile the disk exactly.
//
// [CreatePlain] makes a plain disk with sparse chunks (they read as the zeros the report's
// provider wrote by hand, without writing them) and [OpenPlain] presents the chunks as one
// io.ReaderAt / io.WriterAt.
//
// For migration, [Inspect] and [Files] list the files an image is made of — a plain disk's
// descriptor and chunks, a VMDK descriptor's extents and parent, a qcow2 image's backing chain —
// by reading headers and descriptors directly instead of running qemu-img.
package disk
