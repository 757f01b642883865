package node

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strings"
	"text/template"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// Profile picks the network behaviour of a node.
type Profile string

const (
	// ProfileLocal listens on loopback only and sends nothing to any other address: no mDNS,
	// no NAT port mapping, no relays, no hole punching. Tests and the demo use it.
	ProfileLocal Profile = "local"
	// ProfilePublic listens on all interfaces on fixed ports, with mDNS, NAT port mapping and
	// hole punching, for a real deployment.
	ProfilePublic Profile = "public"
)

// Default ports of the public profile; the local profile picks free ones.
const (
	DefaultP2PPort = 4710
	DefaultAPIPort = 4711
)

// ErrInvalidConfig marks a configuration that fails validation.
var ErrInvalidConfig = errors.New("invalid configuration")

// Config is the node's configuration, kept in config.toml in the home directory.
type Config struct {
	Profile  Profile        `toml:"profile"`
	Network  NetworkConfig  `toml:"network"`
	API      APIConfig      `toml:"api"`
	Roles    RolesConfig    `toml:"roles"`
	Provider ProviderConfig `toml:"provider"`
	Market   MarketConfig   `toml:"market"`
	Ledger   LedgerConfig   `toml:"ledger"`
	Events   EventsConfig   `toml:"events"`
	Log      LogConfig      `toml:"log"`
}

// LedgerConfig is how a node settles: where it pushes its ledger entries and, on a
// coordinator, how the group runs.
type LedgerConfig struct {
	// Coordinators are coordinators' full addresses (ending in /p2p/ID): any of them will do,
	// a follower names the leader.
	Coordinators []string `toml:"coordinators"`
	// Bootstrap: a coordinator without raft state starts a new group of its own; set it false
	// on a coordinator that is to join a group (virtuoso ledger join).
	Bootstrap bool `toml:"bootstrap"`
	// TickInterval is how often the leader ticks: charges fall due at ticks.
	TickInterval time.Duration `toml:"tick_interval"`
	// SyncInterval is how often a node pushes and reads its account when it has nothing new.
	SyncInterval time.Duration `toml:"sync_interval"`
	// WarnPeriods: a buyer whose balance covers fewer rounds of its next periods is warned.
	WarnPeriods int64 `toml:"warn_periods"`
}

// DefaultLedgerConfig is the [ledger] section.
func DefaultLedgerConfig() LedgerConfig {
	return LedgerConfig{Bootstrap: true, TickInterval: 5 * time.Second, SyncInterval: 5 * time.Second, WarnPeriods: 3}
}

// Validate reports every problem of the [ledger] section.
func (c LedgerConfig) Validate(p Profile) error { return c.problems(p).err() }

func (c LedgerConfig) problems(p Profile) problems {
	var ps problems
	for _, s := range c.Coordinators {
		if _, err := ParseBootstrap(s, p == ProfileLocal); err != nil {
			ps.add("ledger.coordinators %q: %v", s, err)
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"tick_interval", c.TickInterval}, {"sync_interval", c.SyncInterval}} {
		if d.v < 100*time.Millisecond || d.v > time.Hour {
			ps.add("ledger.%s %v is out of range: use between 100ms and 1h, e.g. \"5s\"", d.name, d.v)
		}
	}
	if c.WarnPeriods < 1 || c.WarnPeriods > 1000 {
		ps.add("ledger.warn_periods %d is out of range: use 1 to 1000", c.WarnPeriods)
	}
	return ps
}

// NetworkConfig is the peer-to-peer part of the configuration.
type NetworkConfig struct {
	Listen            []string      `toml:"listen"`
	Bootstrap         []string      `toml:"bootstrap"`
	MDNS              bool          `toml:"mdns"`
	NATPortMap        bool          `toml:"nat_port_map"`
	HolePunching      bool          `toml:"hole_punching"`
	Rendezvous        string        `toml:"rendezvous"`
	DiscoveryInterval time.Duration `toml:"discovery_interval"`
	MaxConnections    int           `toml:"max_connections"`
}

// APIConfig is the local HTTP API.
type APIConfig struct {
	Listen       string `toml:"listen"`
	MaxBodyBytes int64  `toml:"max_body_bytes"`
	// IdleTimeout closes a keep-alive connection that carries no request for this long.
	IdleTimeout time.Duration `toml:"idle_timeout"`
}

// RolesConfig switches roles on; every node is also a buyer with its own web UI.
type RolesConfig struct {
	Provider    bool `toml:"provider"`
	Coordinator bool `toml:"coordinator"`
}

// ProviderConfig is the hypervisor side of a provider node.
type ProviderConfig struct {
	// Driver is the hypervisor VMs run on: DriverQEMU (this machine) or DriverVSphere.
	Driver      string `toml:"driver"`
	Accel       string `toml:"accel"`
	VNCPorts    [2]int `toml:"vnc_ports"`
	MaxConsoles int    `toml:"max_consoles"`
	// MaxLeasesPerBuyer and BuyerSharePercent bound what one buyer holds here until payments
	// settle: at most this many VMs, and at most this share of any machine's capacity.
	MaxLeasesPerBuyer int      `toml:"max_leases_per_buyer"`
	BuyerSharePercent int      `toml:"buyer_share_percent"`
	ImageDirs         []string `toml:"image_dirs"`
	// CacheMB bounds the disk taken by the copies this provider keeps of VMs that migrated
	// away (so that a return sends only what changed); the oldest go first, beyond it and
	// when a new VM needs the room. 0 keeps none.
	CacheMB int64 `toml:"cache_mb"`
	// VSphere is where VMs run when Driver is DriverVSphere.
	VSphere VSphereConfig `toml:"vsphere"`
}

// Hypervisor drivers of a provider.
const (
	DriverQEMU    = "qemu"
	DriverVSphere = "vsphere"
)

// VSphereConfig is the vCenter or ESXi host a vSphere provider runs its VMs on.
type VSphereConfig struct {
	// URL of the SDK endpoint, https://host/sdk, without credentials.
	URL      string `toml:"url"`
	Username string `toml:"username"`
	// PasswordFile holds the password (keep it mode 0600), so that config.toml holds none.
	PasswordFile string `toml:"password_file"`
	// Insecure accepts a certificate that does not verify (a self-signed ESXi host's).
	Insecure     bool   `toml:"insecure"`
	Datacenter   string `toml:"datacenter"`
	Datastore    string `toml:"datastore"`
	ResourcePool string `toml:"resource_pool"`
	Folder       string `toml:"folder"`
	Network      string `toml:"network"`
}

// MarketConfig bounds what strangers can make a node hold or wait for.
type MarketConfig struct {
	// FirstFrameTimeout is how long a peer has to send its request on a stream it opened.
	FirstFrameTimeout time.Duration `toml:"first_frame_timeout"`
	// MaxOffersPerProvider and MaxOffers bound the offer book: machines of one provider
	// identity, and all.
	MaxOffersPerProvider int `toml:"max_offers_per_provider"`
	MaxOffers            int `toml:"max_offers"`
	// StreamsPerPeer is the most streams of each market protocol one peer may hold open at
	// once; MaxStreams the most over all peers.
	StreamsPerPeer int `toml:"streams_per_peer"`
	MaxStreams     int `toml:"max_streams"`
}

// DefaultMarketConfig is the [market] section.
func DefaultMarketConfig() MarketConfig {
	return MarketConfig{FirstFrameTimeout: 5 * time.Second, MaxOffersPerProvider: 64, MaxOffers: 16384,
		StreamsPerPeer: 8, MaxStreams: 1024}
}

// Validate reports every problem of the [market] section.
func (c MarketConfig) Validate() error { return c.problems().err() }

func (c MarketConfig) problems() problems {
	var ps problems
	if c.FirstFrameTimeout < 100*time.Millisecond || c.FirstFrameTimeout > 5*time.Minute {
		ps.add("market.first_frame_timeout %v is out of range: use between 100ms and 5m, e.g. \"5s\"", c.FirstFrameTimeout)
	}
	if c.MaxOffersPerProvider < 1 || c.MaxOffers < c.MaxOffersPerProvider || c.MaxOffers > 1_000_000 {
		ps.add("market.max_offers_per_provider %d and max_offers %d are out of range: use 1 <= max_offers_per_provider <= max_offers <= 1000000", c.MaxOffersPerProvider, c.MaxOffers)
	}
	if c.StreamsPerPeer < 1 || c.MaxStreams < 8*c.StreamsPerPeer || c.MaxStreams > 65536 {
		ps.add("market.streams_per_peer %d and max_streams %d are out of range: use 1 <= streams_per_peer and 8*streams_per_peer <= max_streams <= 65536 (room for eight peers at their cap)", c.StreamsPerPeer, c.MaxStreams)
	}
	return ps
}

// EventsConfig is the node's event log.
type EventsConfig struct {
	// MaxRecords is how many records the event log keeps; the oldest go first.
	MaxRecords int `toml:"max_records"`
}

// DefaultEventsConfig is the [events] section.
func DefaultEventsConfig() EventsConfig { return EventsConfig{MaxRecords: DefaultMaxEventRecords} }

// Validate reports every problem of the [events] section.
func (c EventsConfig) Validate() error { return c.problems().err() }

func (c EventsConfig) problems() problems {
	var ps problems
	if c.MaxRecords < 100 || c.MaxRecords > 10_000_000 {
		ps.add("events.max_records %d is out of range: use between 100 and 10000000", c.MaxRecords)
	}
	return ps
}

// LogConfig sets logging.
type LogConfig struct {
	Level  string `toml:"level"`
	Format string `toml:"format"`
}

// DefaultConfig returns the defaults of a profile: each section's.
func DefaultConfig(p Profile) Config {
	return Config{Profile: p, Network: DefaultNetworkConfig(p), API: DefaultAPIConfig(p),
		Provider: DefaultProviderConfig(), Market: DefaultMarketConfig(), Ledger: DefaultLedgerConfig(),
		Events: DefaultEventsConfig(), Log: DefaultLogConfig()}
}

// DefaultNetworkConfig is the [network] section of profile p: loopback only for the local
// profile; all interfaces on DefaultP2PPort with mDNS, NAT port mapping and hole punching for
// the public one.
func DefaultNetworkConfig(p Profile) NetworkConfig {
	c := NetworkConfig{
		Listen:            []string{"/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"},
		Bootstrap:         []string{},
		Rendezvous:        "virtuoso/marketplace/1",
		DiscoveryInterval: 30 * time.Second,
		MaxConnections:    256,
	}
	if p == ProfilePublic {
		c.Listen = []string{
			fmt.Sprintf("/ip4/0.0.0.0/tcp/%d", DefaultP2PPort),
			fmt.Sprintf("/ip4/0.0.0.0/udp/%d/quic-v1", DefaultP2PPort),
			fmt.Sprintf("/ip6/::/tcp/%d", DefaultP2PPort),
			fmt.Sprintf("/ip6/::/udp/%d/quic-v1", DefaultP2PPort),
		}
		c.MDNS, c.NATPortMap, c.HolePunching = true, true, true
	}
	return c
}

// DefaultAPIConfig is the [api] section of profile p: any free loopback port for the local
// profile, DefaultAPIPort for the public one.
func DefaultAPIConfig(p Profile) APIConfig {
	c := APIConfig{Listen: "127.0.0.1:0", MaxBodyBytes: 1 << 20, IdleTimeout: 60 * time.Second}
	if p == ProfilePublic {
		c.Listen = fmt.Sprintf("127.0.0.1:%d", DefaultAPIPort)
	}
	return c
}

// DefaultProviderConfig is the [provider] section: QEMU, KVM when it works.
func DefaultProviderConfig() ProviderConfig {
	return ProviderConfig{Driver: DriverQEMU, Accel: "auto", VNCPorts: [2]int{5910, 5999}, MaxConsoles: 8, ImageDirs: []string{},
		MaxLeasesPerBuyer: 8, BuyerSharePercent: 50, CacheMB: 10240}
}

// DefaultLogConfig is the [log] section.
func DefaultLogConfig() LogConfig { return LogConfig{Level: "info", Format: "text"} }

// Validate reports every problem of the configuration, each with what to do about it.
func (c Config) Validate() error {
	var ps problems
	if c.Profile != ProfileLocal && c.Profile != ProfilePublic {
		ps.add("profile %q is unknown: use %q or %q", c.Profile, ProfileLocal, ProfilePublic)
	}
	ps = slices.Concat(ps, c.Network.problems(c.Profile), c.API.problems(), c.Provider.problems(c.Profile), c.Market.problems(),
		c.Ledger.problems(c.Profile), c.Events.problems(), c.Log.problems())
	return ps.err()
}

// problems are what is wrong with a configuration, each with what to do about it.
type problems []string

func (ps *problems) add(format string, a ...any) { *ps = append(*ps, fmt.Sprintf(format, a...)) }

func (ps problems) err() error {
	if len(ps) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrInvalidConfig, strings.Join(ps, "; "))
}

// Validate reports every problem of the [network] section for profile p.
func (c NetworkConfig) Validate(p Profile) error { return c.problems(p).err() }

func (c NetworkConfig) problems(p Profile) problems {
	var ps problems
	bad := ps.add
	local := p == ProfileLocal
	if len(c.Listen) == 0 {
		bad("network.listen is empty: give at least one multiaddr, e.g. /ip4/127.0.0.1/tcp/0")
	}
	for _, s := range c.Listen {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			bad("network.listen %q is not a multiaddr (%v): write it like /ip4/127.0.0.1/tcp/0", s, err)
			continue
		}
		if local && !manet.IsIPLoopback(a) {
			bad("network.listen %q is not a loopback address: the local profile listens on 127.0.0.1 or ::1 only (or re-init with --profile public)", s)
		}
	}
	for _, s := range c.Bootstrap {
		if _, err := ParseBootstrap(s, local); err != nil {
			bad("network.bootstrap: %v", err)
		}
	}
	if local && (c.MDNS || c.NATPortMap || c.HolePunching) {
		bad("the local profile sends nothing beyond loopback: set network.mdns, nat_port_map and hole_punching to false (or re-init with --profile public)")
	}
	if strings.TrimSpace(c.Rendezvous) == "" {
		bad("network.rendezvous is empty: nodes of one marketplace share a rendezvous key, e.g. %q", DefaultNetworkConfig(ProfileLocal).Rendezvous)
	}
	if c.DiscoveryInterval < 100*time.Millisecond || c.DiscoveryInterval > time.Hour {
		bad("network.discovery_interval %v is out of range: use between 100ms and 1h, e.g. \"30s\"", c.DiscoveryInterval)
	}
	if c.MaxConnections < 8 || c.MaxConnections > 100_000 {
		bad("network.max_connections %d is out of range: use between 8 and 100000", c.MaxConnections)
	}
	return ps
}

// Validate reports every problem of the [api] section.
func (c APIConfig) Validate() error { return c.problems().err() }

func (c APIConfig) problems() problems {
	var ps problems
	if ap, err := netip.ParseAddrPort(c.Listen); err != nil {
		ps.add("api.listen %q is not host:port (%v): use e.g. 127.0.0.1:0", c.Listen, err)
	} else if !ap.Addr().IsLoopback() {
		ps.add("api.listen %q is not a loopback address: the API serves its owner only, use 127.0.0.1:PORT", c.Listen)
	}
	if c.MaxBodyBytes < 1<<10 || c.MaxBodyBytes > 64<<20 {
		ps.add("api.max_body_bytes %d is out of range: use between 1024 and 67108864", c.MaxBodyBytes)
	}
	if c.IdleTimeout < 100*time.Millisecond || c.IdleTimeout > time.Hour {
		ps.add("api.idle_timeout %v is out of range: use between 100ms and 1h, e.g. \"60s\"", c.IdleTimeout)
	}
	return ps
}

// Validate reports every problem of the [provider] section for profile p.
func (c ProviderConfig) Validate(p Profile) error { return c.problems(p).err() }

func (c ProviderConfig) problems(p Profile) problems {
	var ps problems
	bad := ps.add
	switch c.Driver {
	case DriverQEMU:
	case DriverVSphere:
		v := c.VSphere
		if u, err := url.Parse(v.URL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil {
			bad("provider.vsphere.url %q is not the SDK address: use https://HOST/sdk, with the user in username and the password in the file password_file", v.URL)
		} else if ip, err := netip.ParseAddr(u.Hostname()); p == ProfileLocal && (err != nil || !ip.IsLoopback()) {
			bad("provider.vsphere.url %q is not on loopback, and the local profile reaches nothing else: use the public profile", v.URL)
		}
		if v.Username == "" || v.PasswordFile == "" {
			bad("provider.vsphere needs username and password_file (a file holding the password)")
		}
	default:
		bad("provider.driver %q is unknown: use %q (QEMU on this machine) or %q", c.Driver, DriverQEMU, DriverVSphere)
	}
	switch c.Accel {
	case "auto", "kvm", "tcg":
	default:
		bad("provider.accel %q is unknown: use \"auto\" (KVM when it works, else TCG), \"kvm\" or \"tcg\"", c.Accel)
	}
	if p := c.VNCPorts; p[0] < 5900 || p[1] < p[0] || p[1] > 65535 {
		bad("provider.vnc_ports %v is not a range of VNC ports: use [first, last] with 5900 <= first <= last <= 65535", p)
	}
	if c.MaxConsoles < 1 || c.MaxConsoles > 1000 {
		bad("provider.max_consoles %d is out of range: use between 1 and 1000", c.MaxConsoles)
	}
	if c.MaxLeasesPerBuyer < 1 || c.MaxLeasesPerBuyer > 100_000 {
		bad("provider.max_leases_per_buyer %d is out of range: use between 1 and 100000", c.MaxLeasesPerBuyer)
	}
	if c.BuyerSharePercent < 1 || c.BuyerSharePercent > 100 {
		bad("provider.buyer_share_percent %d is out of range: use between 1 and 100", c.BuyerSharePercent)
	}
	if c.CacheMB < 0 || c.CacheMB > 1<<26 {
		bad("provider.cache_mb %d is out of range: use between 0 (keep no copies of VMs that moved away) and 67108864", c.CacheMB)
	}
	return ps
}

// Validate reports every problem of the [log] section.
func (c LogConfig) Validate() error { return c.problems().err() }

func (c LogConfig) problems() problems {
	var ps problems
	if _, err := ParseLevel(c.Level); err != nil {
		ps.add("log.level: %v", err)
	}
	if c.Format != "text" && c.Format != "json" {
		ps.add("log.format %q is unknown: use \"text\" or \"json\"", c.Format)
	}
	return ps
}

// ParseBootstrap parses a bootstrap peer: a multiaddr that ends in /p2p/<peer ID>. With
// loopbackOnly, only a loopback address is allowed.
func ParseBootstrap(s string, loopbackOnly bool) (peer.AddrInfo, error) {
	a, err := ma.NewMultiaddr(s)
	if err != nil {
		return peer.AddrInfo{}, fmt.Errorf("bootstrap address %q is not a multiaddr (%w): write it like /ip4/127.0.0.1/tcp/4710/p2p/12D3KooW…", s, err)
	}
	info, err := peer.AddrInfoFromP2pAddr(a)
	if err != nil {
		return peer.AddrInfo{}, fmt.Errorf("bootstrap address %q has no /p2p/<peer ID> part: append the peer's ID (virtuoso id on that node prints its full addresses)", s)
	}
	if loopbackOnly {
		for _, addr := range info.Addrs {
			if !manet.IsIPLoopback(addr) {
				return peer.AddrInfo{}, fmt.Errorf("bootstrap address %q is not on loopback: the local profile dials 127.0.0.1 or ::1 only", s)
			}
		}
	}
	return *info, nil
}

// ParseLevel parses a log level name.
func ParseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("level %q is unknown: use debug, info, warn or error", s)
	}
	return l, nil
}

// LoadConfig reads and validates a config file. Unknown keys are errors, so that a typo does
// not silently fall back to a default.
func LoadConfig(path string) (Config, error) {
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return Config{}, fmt.Errorf("no config at %s: run `virtuoso init` first (or pass --home): %w", path, err)
	}
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	// What the file does not set keeps its profile's default: a config written by an earlier
	// release lacks the settings added since.
	var head struct {
		Profile Profile `toml:"profile"`
	}
	if _, err := toml.Decode(string(raw), &head); err != nil {
		return Config{}, fmt.Errorf("config %s is corrupt (%v): fix it or move it away and run `virtuoso init`: %w", path, err, ErrInvalidConfig)
	}
	c := DefaultConfig(cmp.Or(head.Profile, ProfileLocal))
	md, err := toml.Decode(string(raw), &c)
	if err != nil {
		return Config{}, fmt.Errorf("config %s is corrupt (%v): fix it or move it away and run `virtuoso init`: %w", path, err, ErrInvalidConfig)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return Config{}, fmt.Errorf("config %s has unknown keys %s: remove or correct them: %w", path, strings.Join(keys, ", "), ErrInvalidConfig)
	}
	if err := c.Validate(); err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Marshal renders the configuration as a commented TOML file: every field says what it does.
func (c Config) Marshal() []byte {
	var b bytes.Buffer
	if err := configTemplate.Execute(&b, c); err != nil {
		panic(err) // the template is fixed and its data is always a Config
	}
	return b.Bytes()
}

var configTemplate = template.Must(template.New("config").Funcs(template.FuncMap{
	"list": func(ss []string) string {
		q := make([]string, len(ss))
		for i, s := range ss {
			q[i] = fmt.Sprintf("%q", s)
		}
		return "[" + strings.Join(q, ", ") + "]"
	},
}).Parse(`# Virtuoso node configuration. Edit while the node is stopped.

# "local": loopback only, nothing sent to any other address (tests, demos, trying it out).
# "public": all interfaces, fixed ports, mDNS, NAT port mapping and hole punching.
profile = "{{.Profile}}"

[network]
# Multiaddrs to listen on: TCP and QUIC. Port 0 picks a free port at start.
listen = {{list .Network.Listen}}
# Peers dialled at start, each ending in /p2p/<peer ID>. One is enough: the rest of the
# marketplace is found through the DHT. No other bootstrap list is ever used.
bootstrap = {{list .Network.Bootstrap}}
# Find peers on the local network by multicast DNS (public profile only).
mdns = {{.Network.MDNS}}
# Ask the router to forward the listen port (UPnP / NAT-PMP) (public profile only).
nat_port_map = {{.Network.NATPortMap}}
# Let peers behind NATs connect through hole punching (public profile only).
hole_punching = {{.Network.HolePunching}}
# The key under which the marketplace's nodes advertise themselves in the DHT.
rendezvous = "{{.Network.Rendezvous}}"
# How often to advertise and look for other nodes under the rendezvous key.
discovery_interval = "{{.Network.DiscoveryInterval}}"
# Most connections the resource manager allows at once.
max_connections = {{.Network.MaxConnections}}

[api]
# The local HTTP API (CLI and web UI). Loopback only; port 0 picks a free port, written to
# api.addr in the home directory. Requests carry the token kept in api.token.
listen = "{{.API.Listen}}"
# Largest request body accepted, in bytes.
max_body_bytes = {{.API.MaxBodyBytes}}
# A connection that carries no request for this long is closed.
idle_timeout = "{{.API.IdleTimeout}}"

[roles]
# Sell virtual machines from this machine's hypervisor.
provider = {{.Roles.Provider}}
# Take part in settling the ledger.
coordinator = {{.Roles.Coordinator}}

[provider]
# Where VMs run: "qemu" on this machine, or "vsphere" on the host of [provider.vsphere].
driver = "{{.Provider.Driver}}"
# Virtualisation: "auto" uses KVM when it works and falls back to TCG; "kvm" or "tcg" force one.
accel = "{{.Provider.Accel}}"
# VNC console ports [first, last], on 127.0.0.1 only: one per running VM.
vnc_ports = [{{index .Provider.VNCPorts 0}}, {{index .Provider.VNCPorts 1}}]
# Most console sessions open at once.
max_consoles = {{.Provider.MaxConsoles}}
# What one buyer may hold here until payments settle: at most this many VMs, and at most this
# percentage of any machine's speed, memory and storage (strangers cannot squat a machine).
max_leases_per_buyer = {{.Provider.MaxLeasesPerBuyer}}
buyer_share_percent = {{.Provider.BuyerSharePercent}}
# Directories whose disk images and kernels VMs may start from, besides the home's images/.
image_dirs = {{list .Provider.ImageDirs}}
# Most disk (MiB) the copies of VMs that migrated away may take; they make a return send only
# what changed. The oldest go first, beyond this and when a new VM needs the room; 0 keeps none.
cache_mb = {{.Provider.CacheMB}}

[provider.vsphere]
# With driver = "vsphere": the SDK address https://HOST/sdk, the user, and a file holding the
# password (mode 0600). insecure accepts a self-signed certificate. Empty inventory names take
# the only datacenter, datastore and resource pool there is, the root VM folder, "VM Network".
url = "{{.Provider.VSphere.URL}}"
username = "{{.Provider.VSphere.Username}}"
password_file = "{{.Provider.VSphere.PasswordFile}}"
insecure = {{.Provider.VSphere.Insecure}}
datacenter = "{{.Provider.VSphere.Datacenter}}"
datastore = "{{.Provider.VSphere.Datastore}}"
resource_pool = "{{.Provider.VSphere.ResourcePool}}"
folder = "{{.Provider.VSphere.Folder}}"
network = "{{.Provider.VSphere.Network}}"

[market]
# A peer that opens a stream has this long to send its request, or the stream is reset.
first_frame_timeout = "{{.Market.FirstFrameTimeout}}"
# The offer book holds at most this many machines of one provider identity, and this many in
# all; a full book makes room by dropping offers of the identity that holds the most.
max_offers_per_provider = {{.Market.MaxOffersPerProvider}}
max_offers = {{.Market.MaxOffers}}
# A peer may hold at most this many streams of each market protocol open at once (control,
# store, console, catch-up, notices), and all peers together at most max_streams: strangers
# holding all they may leave room for a VM's owner and a buyer.
streams_per_peer = {{.Market.StreamsPerPeer}}
max_streams = {{.Market.MaxStreams}}

[ledger]
# Coordinators this node pushes its ledger entries to and reads its account from: full
# addresses ending in /p2p/ID; any one of a group will do.
coordinators = [{{range $i, $a := .Ledger.Coordinators}}{{if $i}}, {{end}}"{{$a}}"{{end}}]
# On a coordinator without raft state: start a new group (true), or wait to be joined to one
# with "virtuoso ledger join" (false).
bootstrap = {{.Ledger.Bootstrap}}
# How often the leading coordinator ticks (charges fall due at ticks), and how often a node
# pushes and reads its account when it has nothing new.
tick_interval = "{{.Ledger.TickInterval}}"
sync_interval = "{{.Ledger.SyncInterval}}"
# A buyer whose balance covers fewer rounds of its VMs' next periods is warned.
warn_periods = {{.Ledger.WarnPeriods}}

[events]
# The event log ("virtuoso events" shows it) keeps this many records of what happened on this node;
# the oldest are removed first.
max_records = {{.Events.MaxRecords}}

[log]
# debug, info, warn or error.
level = "{{.Log.Level}}"
# "text" or "json".
format = "{{.Log.Format}}"
`))

// ListenAddrs returns the parsed listen multiaddrs of a validated config.
func (c Config) ListenAddrs() []ma.Multiaddr {
	out := make([]ma.Multiaddr, 0, len(c.Network.Listen))
	for _, s := range c.Network.Listen {
		if a, err := ma.NewMultiaddr(s); err == nil {
			out = append(out, a)
		}
	}
	return out
}

// BootstrapPeers returns the parsed bootstrap peers of a validated config.
func (c Config) BootstrapPeers() []peer.AddrInfo {
	out := make([]peer.AddrInfo, 0, len(c.Network.Bootstrap))
	for _, s := range c.Network.Bootstrap {
		if info, err := ParseBootstrap(s, c.Profile == ProfileLocal); err == nil {
			out = append(out, info)
		}
	}
	return out
}

// AddBootstrap appends bootstrap peers given on the command line, without duplicates.
func (c *Config) AddBootstrap(addrs ...string) {
	for _, a := range addrs {
		if !slices.Contains(c.Network.Bootstrap, a) {
			c.Network.Bootstrap = append(c.Network.Bootstrap, a)
		}
	}
}
