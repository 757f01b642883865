package node

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDefaultConfigsAreValidAndRoundTrip(t *testing.T) {
	for _, p := range []Profile{ProfileLocal, ProfilePublic} {
		t.Run(string(p), func(t *testing.T) {
			c := DefaultConfig(p)
			if err := c.Validate(); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(t.TempDir(), "config.toml")
			if err := os.WriteFile(path, c.Marshal(), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := LoadConfig(path)
			if err != nil {
				t.Fatal(err)
			}
			if string(got.Marshal()) != string(c.Marshal()) {
				t.Fatalf("round trip changed the config:\n%s\nvs\n%s", got.Marshal(), c.Marshal())
			}
		})
	}
}

func TestValidateSaysWhatIsWrong(t *testing.T) {
	for _, tc := range []struct {
		name   string
		edit   func(c *Config)
		expect string
	}{
		{"unknown profile", func(c *Config) { c.Profile = "galactic" }, `profile "galactic" is unknown`},
		{"listen not a multiaddr", func(c *Config) { c.Network.Listen = []string{"127.0.0.1:80"} }, "is not a multiaddr"},
		{"local listens off loopback", func(c *Config) { c.Network.Listen = []string{"/ip4/0.0.0.0/tcp/0"} }, "not a loopback address"},
		{"no listen", func(c *Config) { c.Network.Listen = nil }, "network.listen is empty"},
		{"bootstrap without peer", func(c *Config) { c.Network.Bootstrap = []string{"/ip4/127.0.0.1/tcp/1"} }, "no /p2p/<peer ID>"},
		{"local with mdns", func(c *Config) { c.Network.MDNS = true }, "local profile sends nothing beyond loopback"},
		{"empty rendezvous", func(c *Config) { c.Network.Rendezvous = " " }, "rendezvous is empty"},
		{"discovery too fast", func(c *Config) { c.Network.DiscoveryInterval = time.Millisecond }, "discovery_interval"},
		{"too few connections", func(c *Config) { c.Network.MaxConnections = 1 }, "max_connections"},
		{"api off loopback", func(c *Config) { c.API.Listen = "0.0.0.0:80" }, "api.listen"},
		{"api not host:port", func(c *Config) { c.API.Listen = "localhost" }, "not host:port"},
		{"tiny body cap", func(c *Config) { c.API.MaxBodyBytes = 1 }, "max_body_bytes"},
		{"bad accel", func(c *Config) { c.Provider.Accel = "warp" }, `provider.accel "warp"`},
		{"bad driver", func(c *Config) { c.Provider.Driver = "xen" }, `provider.driver "xen"`},
		{"vsphere without url", func(c *Config) { c.Provider.Driver = DriverVSphere }, "provider.vsphere.url"},
		{"vsphere credentials in the url", func(c *Config) {
			c.Provider.Driver, c.Provider.VSphere = DriverVSphere, VSphereConfig{URL: "https://root:pw@127.0.0.1/sdk", Username: "root", PasswordFile: "pw"}
		}, "password_file"},
		{"vsphere off loopback in the local profile", func(c *Config) {
			c.Provider.Driver, c.Provider.VSphere = DriverVSphere, VSphereConfig{URL: "https://10.0.0.9/sdk", Username: "root", PasswordFile: "pw"}
		}, "not on loopback"},
		{"inverted vnc ports", func(c *Config) { c.Provider.VNCPorts = [2]int{5999, 5910} }, "provider.vnc_ports"},
		{"no consoles", func(c *Config) { c.Provider.MaxConsoles = 0 }, "provider.max_consoles"},
		{"tiny event log", func(c *Config) { c.Events.MaxRecords = 10 }, "events.max_records"},
		{"bad level", func(c *Config) { c.Log.Level = "loud" }, `level "loud" is unknown`},
		{"bad format", func(c *Config) { c.Log.Format = "xml" }, `log.format "xml"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig(ProfileLocal)
			tc.edit(&c)
			err := c.Validate()
			if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tc.expect) {
				t.Fatalf("Validate = %v; want ErrInvalidConfig saying %q", err, tc.expect)
			}
		})
	}
}

// FuzzLoadConfig: any bytes in config.toml give a config that validates, or an error; never a
// panic.
func FuzzLoadConfig(f *testing.F) {
	f.Add(DefaultConfig(ProfileLocal).Marshal())
	f.Add(DefaultConfig(ProfilePublic).Marshal())
	f.Add([]byte("profile = [\n"))
	f.Add([]byte("[network]\ndiscovery_interval = \"-5s\"\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		if len(raw) > 1<<16 {
			return
		}
		path := filepath.Join(t.TempDir(), "config.toml")
		if err := os.WriteFile(path, raw, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := LoadConfig(path)
		if err == nil {
			if verr := c.Validate(); verr != nil {
				t.Fatalf("LoadConfig accepted an invalid config: %v", verr)
			}
		}
	})
}

// TestEarlierConfigsLoad: a config.toml written before a setting existed loads, the missing
// settings taking their profile's defaults.
func TestEarlierConfigsLoad(t *testing.T) {
	for _, p := range []Profile{ProfileLocal, ProfilePublic} {
		t.Run(string(p), func(t *testing.T) {
			var kept []string
			for _, line := range strings.Split(string(DefaultConfig(p).Marshal()), "\n") {
				if !strings.HasPrefix(line, "driver =") && !strings.HasPrefix(line, "idle_timeout =") && !strings.HasPrefix(line, "max_records =") {
					kept = append(kept, line)
				}
			}
			path := filepath.Join(t.TempDir(), "config.toml")
			if err := os.WriteFile(path, []byte(strings.Join(kept, "\n")), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := LoadConfig(path)
			if err != nil {
				t.Fatalf("an earlier config: %v", err)
			}
			if got.Provider.Driver != DriverQEMU || got.API.IdleTimeout != DefaultAPIConfig(p).IdleTimeout || got.API.Listen != DefaultAPIConfig(p).Listen ||
				got.Events != DefaultEventsConfig() {
				t.Fatalf("missing settings not defaulted: %+v %+v %+v", got.Provider, got.API, got.Events)
			}
		})
	}
}
