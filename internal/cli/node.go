package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/virtuoso-market/virtuoso/internal/daemon"
	"github.com/virtuoso-market/virtuoso/node"
)

func runInit(_ context.Context, env Env, args []string) error {
	f := newFlags(env, "init")
	profile := f.String("profile", string(node.ProfileLocal), "network profile: local (loopback only) or public (all interfaces, fixed ports, mDNS, NAT port mapping)")
	var bootstrap multiFlag
	f.Var(&bootstrap, "bootstrap", "a peer to dial at start, a multiaddr ending in /p2p/<peer ID> (repeatable)")
	provider := f.Bool("provider", false, "sell virtual machines from this machine")
	coordinator := f.Bool("coordinator", false, "take part in settling the ledger")
	force := f.Bool("force", false, "rewrite the config of an existing home (identity and data are kept)")
	if err := f.parse(args, "Create a node's home: a new ed25519 identity, an API token and a documented config.toml."); err != nil {
		return err
	}
	p := node.Profile(*profile)
	if p != node.ProfileLocal && p != node.ProfilePublic {
		return fmt.Errorf("--profile %q is unknown: use local or public", *profile)
	}
	cfg := node.DefaultConfig(p)
	cfg.AddBootstrap(bootstrap...)
	cfg.Roles.Provider, cfg.Roles.Coordinator = *provider, *coordinator
	home := f.homeDir()
	if err := home.Init(cfg, *force); err != nil {
		return err
	}
	priv, err := home.Identity()
	if err != nil {
		return err
	}
	id, err := peerID(priv)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "initialised %s\npeer ID  %s\nprofile  %s\nconfig   %s\n", home.Dir, id, p, home.ConfigPath())
	return nil
}

func runNode(ctx context.Context, env Env, args []string) error {
	f := newFlags(env, "node")
	var bootstrap multiFlag
	f.Var(&bootstrap, "bootstrap", "a peer to dial at start, a multiaddr ending in /p2p/<peer ID> (repeatable; added to the config's)")
	api := f.String("api", "", "the local API's address, 127.0.0.1:PORT (default from config)")
	provider := f.Bool("provider", false, "sell virtual machines from this machine (overrides config)")
	coordinator := f.Bool("coordinator", false, "take part in settling the ledger (overrides config)")
	if err := f.parse(args, "Run the node until Ctrl-C (SIGINT) or SIGTERM, then shut it down cleanly."); err != nil {
		return err
	}
	home := f.homeDir()
	cfg, err := home.Config()
	if err != nil {
		return err
	}
	cfg.AddBootstrap(bootstrap...)
	if *api != "" {
		cfg.API.Listen = *api
	}
	cfg.Roles.Provider = cfg.Roles.Provider || *provider
	cfg.Roles.Coordinator = cfg.Roles.Coordinator || *coordinator
	if err := cfg.Validate(); err != nil {
		return err
	}
	log, err := f.logger(cfg.Log)
	if err != nil {
		return err
	}
	n, err := daemon.New(home, cfg, daemon.Options{Options: node.Options{Logger: log, Version: env.Version}})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := n.Start(ctx); err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "node %s running; API on %s; Ctrl-C to stop\n", n.ID(), n.API().Addr())
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case <-n.Done():
		log.Error("a part of the node failed; shutting down")
	}
	stop() // a second Ctrl-C now ends the process at once
	if err := n.Close(); err != nil {
		return err
	}
	if ctx.Err() == nil {
		return errors.New("the node stopped on its own; the log above says why")
	}
	return nil
}

// idReport is what `virtuoso id` prints. A running node reports its real addresses; a stopped
// one has none, so only its identity and the listen addresses of its config are shown.
type idReport struct {
	node.Identity
	Running bool `json:"running"`
	// ConfiguredListen are the config's listen addresses, given when the node is not running;
	// a port 0 in them is picked when the node starts.
	ConfiguredListen []string `json:"configured_listen,omitempty"`
}

func runID(ctx context.Context, env Env, args []string) error {
	f := newFlags(env, "id")
	asJSON := f.Bool("json", false, "print JSON")
	if err := f.parse(args, "Print the node's peer ID and addresses. When the node is not running, print the peer ID of its home and the listen addresses of its config."); err != nil {
		return err
	}
	home := f.homeDir()
	var rep idReport
	if c, err := f.client(); err == nil && c.Get(ctx, "/v1/id", &rep.Identity) == nil {
		rep.Running = true
	} else {
		cfg, err := home.Config()
		if err != nil {
			return err
		}
		priv, err := home.Identity()
		if err != nil {
			return err
		}
		pid, err := peerID(priv)
		if err != nil {
			return err
		}
		rep.Identity = node.Identity{PeerID: pid, Profile: cfg.Profile,
			Provider: cfg.Roles.Provider, Coordinator: cfg.Roles.Coordinator}
		rep.ConfiguredListen = cfg.Network.Listen
	}
	if *asJSON {
		return printJSON(env, rep)
	}
	fmt.Fprintf(env.Stdout, "peer ID  %s\n", rep.PeerID)
	if rep.Running {
		for _, a := range rep.Addrs {
			fmt.Fprintf(env.Stdout, "address  %s\n", a)
		}
		return nil
	}
	start := "virtuoso node"
	if home.Dir != node.DefaultHomeDir() {
		start += " --home " + home.Dir
	}
	fmt.Fprintf(env.Stdout, "node     not running; start it with `%s`\n", start)
	fmt.Fprintln(env.Stdout, "configured listen addresses (port 0 is picked when the node starts):")
	for _, a := range rep.ConfiguredListen {
		fmt.Fprintf(env.Stdout, "  %s\n", a)
	}
	return nil
}

func runPeers(ctx context.Context, env Env, args []string) error {
	f := newFlags(env, "peers")
	asJSON := f.Bool("json", false, "print JSON")
	if err := f.parse(args, "List the running node's connected peers with their addresses and latency."); err != nil {
		return err
	}
	var peers []node.PeerInfo
	if printed, err := f.call(ctx, http.MethodGet, "/v1/peers", nil, &peers, *asJSON); printed || err != nil {
		return err
	}
	if len(peers) == 0 {
		fmt.Fprintln(env.Stdout, "no peers connected")
		return nil
	}
	tw := tabwriter.NewWriter(env.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tLATENCY\tADDRESS\tAGENT")
	for _, p := range peers {
		addr := ""
		if len(p.Addrs) > 0 {
			addr = p.Addrs[0]
		}
		fmt.Fprintf(tw, "%s\t%.2fms\t%s\t%s\n", p.PeerID, p.LatencyMS, addr, p.Agent)
	}
	return tw.Flush()
}

func printJSON(env Env, v any) error {
	enc := json.NewEncoder(env.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func peerID(priv crypto.PrivKey) (string, error) {
	id, err := peer.IDFromPrivateKey(priv)
	if err != nil {
		return "", fmt.Errorf("peer ID: %w", err)
	}
	return id.String(), nil
}
