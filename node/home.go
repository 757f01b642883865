package node

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/libp2p/go-libp2p/core/crypto"
)

// ErrNotInitialized means the home directory has no node in it yet.
var ErrNotInitialized = errors.New("home is not initialised")

// Home is a node's home directory: its identity, configuration, database and API handle.
// Several nodes run on one machine with nothing but distinct homes.
type Home struct {
	Dir string
}

// DefaultHomeDir is $VIRTUOSO_HOME, or ~/.virtuoso.
func DefaultHomeDir() string {
	if d := os.Getenv("VIRTUOSO_HOME"); d != "" {
		return d
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".virtuoso")
	}
	return ".virtuoso"
}

// Paths within a home.
func (h Home) ConfigPath() string  { return filepath.Join(h.Dir, "config.toml") }
func (h Home) KeyPath() string     { return filepath.Join(h.Dir, "identity.key") }
func (h Home) DataDir() string     { return filepath.Join(h.Dir, "data") }
func (h Home) TokenPath() string   { return filepath.Join(h.Dir, "api.token") }
func (h Home) APIAddrPath() string { return filepath.Join(h.Dir, "api.addr") }

// Path joins elements onto the home directory, for packages that keep files there (VM disks).
func (h Home) Path(elem ...string) string { return filepath.Join(append([]string{h.Dir}, elem...)...) }

// Init creates a home: a new ed25519 identity, an API token and cfg as config.toml. It refuses
// to touch a home that already has an identity, unless force is set, which rewrites only the
// config and keeps the identity and data.
func (h Home) Init(cfg Config, force bool) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if err := os.MkdirAll(h.Dir, 0o700); err != nil {
		return fmt.Errorf("create home %s: %w", h.Dir, err)
	}
	_, err := os.Stat(h.KeyPath())
	exists := err == nil
	if exists && !force {
		return fmt.Errorf("home %s is already initialised: use it as it is, pass --force to rewrite its config (identity and data are kept), or choose another --home", h.Dir)
	}
	if !exists {
		priv, _, err := crypto.GenerateEd25519Key(rand.Reader)
		if err != nil {
			return fmt.Errorf("generate identity: %w", err)
		}
		raw, err := crypto.MarshalPrivateKey(priv)
		if err != nil {
			return fmt.Errorf("encode identity: %w", err)
		}
		if err := writeFileAtomic(h.KeyPath(), raw, 0o600); err != nil {
			return err
		}
	}
	if _, err := os.Stat(h.TokenPath()); err != nil {
		tok := make([]byte, 32)
		if _, err := rand.Read(tok); err != nil {
			return fmt.Errorf("generate API token: %w", err)
		}
		if err := writeFileAtomic(h.TokenPath(), []byte(hex.EncodeToString(tok)+"\n"), 0o600); err != nil {
			return err
		}
	}
	return writeFileAtomic(h.ConfigPath(), cfg.Marshal(), 0o600)
}

// Identity loads the node's private key.
func (h Home) Identity() (crypto.PrivKey, error) {
	raw, err := os.ReadFile(h.KeyPath())
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no identity at %s: run `virtuoso init --home %s` first: %w", h.KeyPath(), h.Dir, ErrNotInitialized)
	}
	if err != nil {
		return nil, fmt.Errorf("identity key %s is unreadable (%w): check its owner and mode 0600", h.KeyPath(), err)
	}
	priv, err := crypto.UnmarshalPrivateKey(raw)
	if err != nil {
		return nil, fmt.Errorf("identity key %s is corrupt (%w): restore it from a backup; a new identity is a new peer ID", h.KeyPath(), err)
	}
	if priv.Type() != crypto.Ed25519 {
		return nil, fmt.Errorf("identity key %s is %s, not ed25519: restore the original key", h.KeyPath(), priv.Type())
	}
	return priv, nil
}

// Config loads and validates config.toml.
func (h Home) Config() (Config, error) {
	if _, err := os.Stat(h.Dir); errors.Is(err, os.ErrNotExist) {
		return Config{}, fmt.Errorf("home %s does not exist: run `virtuoso init --home %s` first: %w", h.Dir, h.Dir, ErrNotInitialized)
	}
	return LoadConfig(h.ConfigPath())
}

// Token reads the API token.
func (h Home) Token() (string, error) {
	raw, err := os.ReadFile(h.TokenPath())
	if err != nil {
		return "", fmt.Errorf("read API token %s (is this node's home initialised?): %w", h.TokenPath(), err)
	}
	return strings.TrimSpace(string(raw)), nil
}

// APIAddr reads the address of the running node's API.
func (h Home) APIAddr() (string, error) {
	raw, err := os.ReadFile(h.APIAddrPath())
	if errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("no node is running on home %s: start one with `virtuoso node --home %s`", h.Dir, h.Dir)
	}
	if err != nil {
		return "", fmt.Errorf("read API address: %w", err)
	}
	return strings.TrimSpace(string(raw)), nil
}

// writeFileAtomic writes via a temporary file and rename, so that a crash never leaves a
// half-written key or config behind.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
