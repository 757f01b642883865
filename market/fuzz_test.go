package market

import (
	"bufio"
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/virtuoso-market/virtuoso/vm"
)

func seedOffer(f *testing.F) []byte {
	key, id := testKey(f, 1)
	so, err := SignOffer(testOffer(id), key)
	if err != nil {
		f.Fatal(err)
	}
	return so.Raw
}

func seedLease(f *testing.F) []byte {
	bkey, buyer := testKey(f, 2)
	pkey, provider := testKey(f, 3)
	l := Lease{ID: LeaseID{9}, VM: vm.ID{8}, Buyer: buyer, Provider: provider, Machine: MachineID{7},
		Config: StandardConfigs()[0], Terms: testTerms(), Created: goldenTime}
	l.Quote, _ = l.Terms.Quote(l.Config.Resources())
	prop, err := ProposeLease(l, bkey)
	if err != nil {
		f.Fatal(err)
	}
	full, _ := prop.Countersign(pkey)
	return full.Encode()
}

func FuzzDecodeOffer(f *testing.F) {
	raw := seedOffer(f)
	f.Add(raw)
	f.Add(raw[:len(raw)/2])
	f.Add([]byte("VO\x01\x00\x00"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		so, err := DecodeOffer(b)
		if err != nil {
			return
		}
		again, err := DecodeOffer(so.Raw)
		if err != nil || !reflect.DeepEqual(again.Offer, so.Offer) {
			t.Fatalf("decoded offer does not decode again the same: %v", err)
		}
	})
}

func FuzzDecodeLease(f *testing.F) {
	raw := seedLease(f)
	f.Add(raw)
	f.Add(raw[:40])
	f.Add([]byte("VL\x01\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		sl, err := DecodeLease(b)
		if err != nil {
			return
		}
		again, err := DecodeLease(sl.Encode())
		if err != nil || again.Lease != sl.Lease {
			t.Fatalf("decoded lease does not decode again the same: %v", err)
		}
	})
}

// FuzzStreamMessages feeds every stream decoder, behind the frame reader, the same bytes.
func FuzzStreamMessages(f *testing.F) {
	lease := seedLease(f)
	for _, v := range []any{
		storeRequest{Lease: lease},
		storeResponse{Lease: lease, State: vm.State{Status: vm.StatusStored, Version: 1}},
		storeResponse{Error: &WireError{Code: "stale", Message: "prices changed"}},
		controlRequest{VM: vm.ID{1}, Action: vm.ActionStart},
		controlRequest{VM: vm.ID{1}, Action: vm.ActionResume, Fresh: true},
		controlResponse{State: vm.State{Status: vm.StatusStarted, Version: 2}, Health: "no console output"},
		controlResponse{State: vm.State{Status: vm.StatusStarted, Version: 2}, Password: "abcdefgh"},
		consoleRequest{VM: vm.ID{1}},
		consoleResponse{Error: &WireError{Code: "not_owner", Message: "no"}},
		notice{Lease: LeaseID{1}, VM: vm.ID{2}, Reason: "machine removed"},
		queryRequest{Max: 10},
		imageRequest{Image: "blake3:" + strings.Repeat("ab", 32), Lease: lease},
		imageResponse{Size: 32 << 20, Boot: &bootDelivery{Size: 9 << 20, Initrd: true, Cmdline: "console=ttyS0 quiet"}},
	} {
		b, _ := json.Marshal(v)
		var framed bytes.Buffer
		WriteFrame(&framed, b)
		f.Add(framed.Bytes())
	}
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f})
	f.Fuzz(func(t *testing.T, b []byte) {
		frame, err := ReadFrame(bufio.NewReader(bytes.NewReader(b)), maxFrameBytes)
		if err != nil {
			return
		}
		if len(frame) > maxFrameBytes {
			t.Fatalf("frame of %d bytes passed the cap", len(frame))
		}
		decodeStoreRequest(frame)
		decodeStoreResponse(frame)
		if r, err := decodeControlRequest(frame); err == nil && r.VM.IsZero() {
			t.Fatal("control request for the zero vm accepted")
		}
		if r, err := decodeControlResponse(frame); err == nil {
			r.Error.err()
		}
		decodeConsoleRequest(frame)
		decodeNotice(frame)
		if r, err := decodeQueryRequest(frame); err == nil && r.Max < 0 {
			t.Fatal("negative max accepted")
		}
		decodeImageRequest(frame)
		var ir imageResponse
		if DecodeStrict(frame, &ir) == nil && ir.check() == nil && ir.Boot != nil && (ir.Boot.Size > maxBootBytes || len(ir.Boot.Cmdline) > maxCmdline) {
			t.Fatalf("image delivery past the caps accepted: %+v", ir.Boot)
		}
	})
}

func FuzzEnvelope(f *testing.F) {
	f.Add(EncodeEnvelope(offerMagic, []byte("{}"), []byte("sig")))
	f.Add([]byte("VO\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		fields, err := DecodeEnvelope(b, offerMagic, MaxOfferBytes, maxBodyBytes, maxSigBytes)
		if err != nil {
			return
		}
		if !bytes.Equal(EncodeEnvelope(offerMagic, fields...), b) {
			t.Fatal("envelope does not re-encode to the same bytes")
		}
	})
}

// FuzzUniqueKeys: the decoder with its duplicate-member check never panics, accepts only valid
// JSON, and refuses what it accepts once a member of its top object is repeated in another case.
func FuzzUniqueKeys(f *testing.F) {
	f.Add([]byte(`{"a":1,"b":{"c":[1,2,{"d":null}]}}`))
	f.Add([]byte(`{"a":1,"A":2}`))
	f.Add([]byte(`[{"a":1},{"a":2}]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var v any
		if DecodeStrict(b, &v) != nil {
			return
		}
		if !json.Valid(b) {
			t.Fatalf("accepted invalid JSON %q", b)
		}
		var top map[string]json.RawMessage
		if json.Unmarshal(b, &top) != nil || len(top) == 0 {
			return
		}
		for k, v := range top {
			twice := append([]byte(`{"`+strings.ToUpper(k)+`":`), v...)
			twice = append(append(twice, ','), bytes.TrimPrefix(bytes.TrimSpace(b), []byte("{"))...)
			if json.Valid(twice) && uniqueKeys(twice) == nil && foldName(strings.ToUpper(k)) == foldName(k) {
				t.Fatalf("accepted %q with member %q named twice", twice, k)
			}
			break
		}
	})
}
