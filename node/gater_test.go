package node

import (
	"testing"

	ma "github.com/multiformats/go-multiaddr"
)

func TestLoopbackGater(t *testing.T) {
	for _, tc := range []struct {
		addr string
		dial bool
	}{
		{"/ip4/127.0.0.1/tcp/4710", true},
		{"/ip4/127.9.9.9/udp/4710/quic-v1", true},
		{"/ip6/::1/tcp/4710", true},
		{"/ip4/192.0.2.1/tcp/4710", false},
		{"/ip4/10.0.0.1/tcp/4710", false},
		{"/ip6/2001:db8::1/tcp/4710", false},
		{"/dns4/example.com/tcp/4710", false},
	} {
		t.Run(tc.addr, func(t *testing.T) {
			if got := (loopbackGater{}).InterceptAddrDial("", ma.StringCast(tc.addr)); got != tc.dial {
				t.Fatalf("InterceptAddrDial(%s) = %v, want %v", tc.addr, got, tc.dial)
			}
		})
	}
}
