package market

import (
	"cmp"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/zeebo/blake3"

	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
)

// Configuration is a VM configuration a buyer can store (report §6.1.6, tables config and
// preconfig): a bare machine, or a preconfigured one whose disk starts as an OS image named by
// its content hash. A buyer edits one before storing it.
type Configuration struct {
	Name          string `json:"name"`
	Processor     string `json:"processor"`
	OS            string `json:"os,omitempty"`
	SpeedBogomips int64  `json:"speed_bogomips"`
	MemoryMB      int64  `json:"memory_mb"`
	DiskMB        int64  `json:"disk_mb"`
	// Image is the content hash ("blake3:<64 hex>", imageParts.hash) of the OS image of a
	// preconfigured configuration; empty for a bare one.
	Image string `json:"image,omitempty"`
}

// Preconfigured reports whether the configuration comes with an OS image.
func (c Configuration) Preconfigured() bool { return c.Image != "" }

// Resources are what the configuration takes of a machine.
func (c Configuration) Resources() Resources {
	return Resources{SpeedBogomips: c.SpeedBogomips, MemoryMB: c.MemoryMB, StorageMB: c.DiskMB}
}

// Validate checks a configuration.
func (c Configuration) Validate() error {
	var p node.Problems
	p.Put(checkText("name", c.Name, true))
	p.Put(checkText("processor", c.Processor, false))
	p.Put(checkText("os", c.OS, false))
	if c.SpeedBogomips < 0 || c.SpeedBogomips > MaxResource {
		p.Add("speed_bogomips", fmt.Sprintf("%d out of range 0..%d", c.SpeedBogomips, int64(MaxResource)))
	}
	if c.MemoryMB < 1 || c.MemoryMB > vm.MaxMemoryMB {
		p.Add("memory_mb", fmt.Sprintf("%d out of range 1..%d", c.MemoryMB, vm.MaxMemoryMB))
	}
	if c.DiskMB < 1 || c.DiskMB > vm.MaxDiskMB {
		p.Add("disk_mb", fmt.Sprintf("%d out of range 1..%d", c.DiskMB, vm.MaxDiskMB))
	}
	if c.Image != "" && !validImageHash(c.Image) {
		p.Add("image", fmt.Sprintf("%q is not blake3:<64 hex digits>", truncate(c.Image)))
	}
	return p.Err(ErrInvalid, "configuration")
}

// ConfigEdit changes fields of a configuration; zero fields stay as they are.
type ConfigEdit struct {
	Name          string `json:"name,omitempty"`
	Processor     string `json:"processor,omitempty"`
	OS            string `json:"os,omitempty"`
	SpeedBogomips int64  `json:"speed_bogomips,omitempty"`
	MemoryMB      int64  `json:"memory_mb,omitempty"`
	DiskMB        int64  `json:"disk_mb,omitempty"`
}

// Apply returns c edited.
func (e ConfigEdit) Apply(c Configuration) Configuration {
	if e.Name != "" {
		c.Name = e.Name
	}
	if e.Processor != "" {
		c.Processor = e.Processor
	}
	if e.OS != "" {
		c.OS = e.OS
	}
	if e.SpeedBogomips != 0 {
		c.SpeedBogomips = e.SpeedBogomips
	}
	if e.MemoryMB != 0 {
		c.MemoryMB = e.MemoryMB
	}
	if e.DiskMB != 0 {
		c.DiskMB = e.DiskMB
	}
	return c
}

// StandardConfigs are the bare configurations every node's catalog starts with (table config).
func StandardConfigs() []Configuration {
	return []Configuration{
		{Name: "tiny", Processor: defaultProcessor, SpeedBogomips: 1000, MemoryMB: 256, DiskMB: 1024},
		{Name: "small", Processor: defaultProcessor, SpeedBogomips: 2000, MemoryMB: 1024, DiskMB: 10240},
		{Name: "medium", Processor: defaultProcessor, SpeedBogomips: 4000, MemoryMB: 4096, DiskMB: 40960},
		{Name: "large", Processor: defaultProcessor, SpeedBogomips: 8000, MemoryMB: 16384, DiskMB: 102400},
	}
}

// ImageInfo describes an OS image a provider holds, as its offers advertise it. Every node
// turns the images it sees in offers into preconfigured configurations (table preconfig).
type ImageInfo struct {
	Hash     string `json:"hash"` // the image's content hash (imageParts.hash), blake3:<64 hex>
	Name     string `json:"name"`
	OS       string `json:"os"`
	SizeMB   int64  `json:"size_mb"`   // the image's size; a VM's disk is at least this
	MemoryMB int64  `json:"memory_mb"` // memory the OS wants
}

func (i ImageInfo) validate() error {
	if !validImageHash(i.Hash) {
		return fmt.Errorf("image hash %q is not blake3:<64 hex digits>", truncate(i.Hash))
	}
	if err := checkText("image name", i.Name, true); err != nil {
		return err
	}
	if err := checkText("image os", i.OS, false); err != nil {
		return err
	}
	if i.SizeMB < 1 || i.SizeMB > vm.MaxDiskMB || i.MemoryMB < 1 || i.MemoryMB > vm.MaxMemoryMB {
		return fmt.Errorf("image %s: sizes out of range", i.Name)
	}
	return nil
}

// configuration is the preconfigured configuration of the image.
func (i ImageInfo) configuration() Configuration {
	return Configuration{Name: i.Name, Processor: defaultProcessor, OS: i.OS, SpeedBogomips: 1000,
		MemoryMB: i.MemoryMB, DiskMB: i.SizeMB, Image: i.Hash}
}

func validImageHash(h string) bool {
	hexPart, ok := strings.CutPrefix(h, "blake3:")
	if !ok || len(hexPart) != 64 {
		return false
	}
	_, err := hex.DecodeString(hexPart)
	return err == nil && strings.ToLower(hexPart) == hexPart
}

// Image is an OS image a provider holds: preconfigured VMs start from a copy of Disk.
type Image struct {
	Name     string         `json:"name"`
	OS       string         `json:"os"`
	Disk     string         `json:"disk"` // path of the raw or qcow2 image on this provider
	MemoryMB int64          `json:"memory_mb"`
	Boot     *vm.KernelBoot `json:"boot,omitempty"` // when the image boots a kernel directly
	// Hash is filled in by the service when it starts (hashImage: from the bytes of the disk,
	// and of the kernel and initramfs of an image that boots one).
	Hash   string `json:"hash,omitempty"`
	sizeMB int64
}

// ScanImages reads the images of a directory: each <name>.json there describes one image
// (an Image, its paths relative to dir). A missing directory holds no images.
func ScanImages(dir string) ([]Image, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("images: %w", err)
	}
	var out []Image
	for _, e := range entries {
		if e.IsDir() || filepath.Ext(e.Name()) != ".json" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("images: %w", err)
		}
		var img Image
		if err := json.Unmarshal(b, &img); err != nil {
			return nil, fmt.Errorf("image %s: %w", e.Name(), err)
		}
		abs := func(p string) string {
			if p == "" || filepath.IsAbs(p) {
				return p
			}
			return filepath.Join(dir, p)
		}
		img.Disk = abs(img.Disk)
		if img.Boot != nil {
			img.Boot.Kernel, img.Boot.Initrd = abs(img.Boot.Kernel), abs(img.Boot.Initrd)
		}
		if img.Name == "" {
			img.Name = strings.TrimSuffix(e.Name(), ".json")
		}
		out = append(out, img)
	}
	return out, nil
}

// imageParts are what an image's content hash covers: the content hashes (contentHash) of its
// files and its kernel command line.
type imageParts struct {
	Disk    string
	Kernel  string // empty for an image that boots from its disk
	Initrd  string // empty without an initramfs
	Cmdline string
}

// maxCmdline caps a kernel command line (Linux takes 2048 bytes on x86).
const maxCmdline = 4096

// description is the canonical description of a kernel-boot image that its content hash is
// the hash of, version 1: a line per part, in this order, the command line last with its
// length in bytes, so that no two images share one:
//
//	virtuoso kernel-boot image 1\n
//	disk blake3:<64 hex>\n
//	kernel blake3:<64 hex>\n
//	initrd blake3:<64 hex>\n  ("initrd none\n" without an initramfs)
//	cmdline <length>\n<the command line>\n
func (p imageParts) description() []byte {
	initrd := cmp.Or(p.Initrd, "none")
	return fmt.Appendf(nil, "virtuoso kernel-boot image 1\ndisk %s\nkernel %s\ninitrd %s\ncmdline %d\n%s\n",
		p.Disk, p.Kernel, initrd, len(p.Cmdline), p.Cmdline)
}

// hash is the image's content hash, as offers list it and configurations name it: that of its
// disk for an image that boots from its disk (so that it is the hash of the image's bytes), and
// that of its description for one that boots a kernel directly, which then covers everything
// that decides what the VM runs. A provider that fetches an image checks every part against it.
func (p imageParts) hash() string {
	if p.Kernel == "" {
		return p.Disk
	}
	sum := blake3.Sum256(p.description())
	return "blake3:" + hex.EncodeToString(sum[:])
}

// hashRecord caches the content hash of a file by path, size and modification time, so that a
// restart does not read every image again. It is a file's hash, never an image's: the image's
// is made of its files' (imageParts), so a file that is the disk of one image and part of
// another is never taken for the other's hash.
type hashRecord struct {
	Size    int64     `json:"size"`
	ModTime time.Time `json:"mod_time"`
	Hash    string    `json:"hash"`
}

// hashImage returns the content hash of img and its disk's size, reading each of its files
// unless the cache holds the file's hash unchanged.
func hashImage(ctx context.Context, cache *node.Space, img Image) (string, int64, error) {
	if b := img.Boot; b != nil && b.Kernel == "" {
		return "", 0, fmt.Errorf("image %s: boot without a kernel", img.Name)
	} else if b != nil && len(b.Cmdline) > maxCmdline {
		return "", 0, fmt.Errorf("image %s: kernel command line longer than %d bytes", img.Name, maxCmdline)
	}
	var p imageParts
	var size int64
	var err error
	if p.Disk, size, err = hashFile(ctx, cache, img.Disk); err != nil {
		return "", 0, err
	}
	if b := img.Boot; b != nil {
		if p.Kernel, _, err = hashFile(ctx, cache, b.Kernel); err != nil {
			return "", 0, err
		}
		if b.Initrd != "" {
			if p.Initrd, _, err = hashFile(ctx, cache, b.Initrd); err != nil {
				return "", 0, err
			}
		}
		p.Cmdline = b.Cmdline
	}
	return p.hash(), size, nil
}

// hashFile returns the content hash of the file at path and its size, from the cache when the
// file is unchanged.
func hashFile(ctx context.Context, cache *node.Space, path string) (string, int64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", 0, fmt.Errorf("image %s: %w", path, err)
	}
	if rec, err := node.GetJSON[hashRecord](cache, path); err == nil && rec.Size == fi.Size() && rec.ModTime.Equal(fi.ModTime()) {
		return rec.Hash, fi.Size(), nil
	}
	sum, size, err := contentHash(ctx, path)
	if err != nil {
		return "", 0, err
	}
	node.PutJSON(cache, path, hashRecord{Size: fi.Size(), ModTime: fi.ModTime(), Hash: sum})
	return sum, size, nil
}

// imageNames binds the name of each preconfigured configuration to the image (by hash) this
// node first saw under it, persisted: a stranger advertising another image under a known name
// gets a name of its own (name@hash) and never takes the name over.
type imageNames map[string]string

// maxImageNames caps the bindings a node keeps; images beyond it are listed as name@hash.
const maxImageNames = 4096

// catalogName is the name under which the catalog lists img.
func (n imageNames) catalogName(img ImageInfo) string {
	if bound, ok := n[img.Name]; ok && bound == img.Hash {
		return img.Name
	}
	return img.Name + "@" + strings.TrimPrefix(img.Hash, "blake3:")[:8]
}

// catalog is the buyer's list of configurations: the standard ones, the preconfigured ones of
// the images seen in offers (named as names binds them), and the buyer's own edited ones
// (persisted), by name.
func catalog(own []Configuration, offers []Offer, names imageNames) []Configuration {
	out := StandardConfigs()
	seen := map[string]bool{}
	for _, c := range out {
		seen[c.Name] = true
	}
	var pre []Configuration
	for _, o := range offers {
		for _, img := range o.Images {
			c := img.configuration()
			c.Name = names.catalogName(img)
			if !seen[c.Name] {
				seen[c.Name] = true
				pre = append(pre, c)
			}
		}
	}
	slices.SortFunc(pre, func(a, b Configuration) int { return strings.Compare(a.Name, b.Name) })
	out = append(out, pre...)
	for _, c := range own {
		if i := slices.IndexFunc(out, func(x Configuration) bool { return x.Name == c.Name }); i >= 0 {
			out[i] = c
		} else {
			out = append(out, c)
		}
	}
	return out
}

// resolve returns a request's configuration: c, or the catalog's called name, with e applied.
func (b *Book) resolve(c *Configuration, name string, e ConfigEdit) (Configuration, error) {
	var cfg Configuration
	switch {
	case c != nil:
		cfg = *c
	case name != "":
		var err error
		if cfg, err = b.Config(name); err != nil {
			return cfg, err
		}
	default:
		return cfg, fmt.Errorf("%w: give a configuration or a configuration name (see `virtuoso configs`)", ErrInvalid)
	}
	cfg = e.Apply(cfg)
	if cfg.Processor == "" {
		cfg.Processor = defaultProcessor
	}
	// A problem is the field's the request gave: the edit's of a configuration by name.
	var p node.Problems
	field := "edit"
	if c != nil {
		field = "config"
	}
	p.Nest(field, cfg.Validate())
	return cfg, p.Err(ErrInvalid, "configuration")
}

// ConfigView is a catalog entry with its market average.
type ConfigView struct {
	Configuration
	Preconfigured bool           `json:"preconfigured"`
	Own           bool           `json:"own,omitempty"` // added by this buyer
	Average       *ConfigAverage `json:"average,omitempty"`
}

// Configs lists the catalog: standard configurations, the preconfigured ones of the images in
// live offers, and the buyer's own, each with its market average.
func (b *Book) Configs() ([]ConfigView, error) {
	own, err := b.ownConfigs()
	if err != nil {
		return nil, err
	}
	cat := catalog(own, b.offers.Live(b.now()), b.names())
	out := make([]ConfigView, len(cat))
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, c := range cat {
		out[i] = ConfigView{Configuration: c, Preconfigured: c.Preconfigured(),
			Own: slices.ContainsFunc(own, func(o Configuration) bool { return o.Name == c.Name })}
		if a, ok := b.avgs[c.Name]; ok {
			out[i].Average = &a
		}
	}
	return out, nil
}

// Config returns the catalog's configuration called name.
func (b *Book) Config(name string) (Configuration, error) {
	own, err := b.ownConfigs()
	if err != nil {
		return Configuration{}, err
	}
	for _, c := range catalog(own, b.offers.Live(b.now()), b.names()) {
		if c.Name == name {
			return c, nil
		}
	}
	return Configuration{}, fmt.Errorf("%w: no configuration %q (see `virtuoso configs`)", ErrNotFound, truncate(name))
}

// AddConfig keeps an edited configuration in the buyer's catalog under its own name.
func (b *Book) AddConfig(c Configuration) (Configuration, error) {
	if c.Processor == "" {
		c.Processor = defaultProcessor
	}
	if err := c.Validate(); err != nil {
		return c, err
	}
	if slices.ContainsFunc(StandardConfigs(), func(sc Configuration) bool { return sc.Name == c.Name }) {
		return c, fmt.Errorf("%w: %q is a standard configuration; give the edited one another name", ErrExists, c.Name)
	}
	return c, node.PutJSON(b.cfgSpace, c.Name, c)
}

func (b *Book) ownConfigs() ([]Configuration, error) {
	var out []Configuration
	err := b.cfgSpace.List(func(key string, val []byte) error {
		var c Configuration
		if err := json.Unmarshal(val, &c); err != nil {
			return fmt.Errorf("configuration %s: %w", key, err)
		}
		out = append(out, c)
		return nil
	})
	return out, err
}

// SearchQuery is a search by configuration name (with edits) or by full configuration.
type SearchQuery struct {
	ConfigName string     `json:"config_name,omitempty"`
	Edit       ConfigEdit `json:"edit"`
	SearchRequest
}

// Search finds the providers that can host a configuration, cheapest first.
func (b *Book) Search(q SearchQuery) ([]Match, error) {
	req := q.SearchRequest
	var c *Configuration
	if q.ConfigName == "" {
		c = &req.Config
	}
	cfg, err := b.resolve(c, q.ConfigName, q.Edit)
	if err != nil {
		return nil, err
	}
	req.Config = cfg
	out, err := b.offers.Search(b.now(), req)
	if err != nil {
		return nil, err
	}
	self := b.n.ID() // a node does not buy from itself
	return slices.DeleteFunc(out, func(m Match) bool { return m.Provider == self }), nil
}

// sortConfigs orders averages like the catalog.
func sortConfigs(cat []Configuration, avgs map[string]ConfigAverage) []ConfigAverage {
	out := make([]ConfigAverage, 0, len(cat))
	for _, c := range cat {
		if a, ok := avgs[c.Name]; ok {
			out = append(out, a)
		}
	}
	return out
}
