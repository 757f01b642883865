package qemu

import (
	"bufio"
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/virtuoso-market/virtuoso/vm"
)

func TestReadQMP(t *testing.T) {
	tests := []struct {
		name, in string
		event    string
		ret      string
		errClass string
		fail     bool
	}{
		{"return", `{"return": {"status": "running"}, "id": 3}` + "\n", "", `{"status": "running"}`, "", false},
		{"event", `{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}` + "\n", "STOP", "", "", false},
		{"error", `{"error": {"class": "GenericError", "desc": "nope"}, "id": 1}` + "\n", "", "", "GenericError", false},
		{"crlf", `{"return": {}}` + "\r\n", "", `{}`, "", false},
		{"garbage", "not json\n", "", "", "", true},
		{"oversized", `{"return": "` + strings.Repeat("x", maxQMPMessage) + `"}` + "\n", "", "", "", true},
		{"eof", "", "", "", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg, err := readQMP(bufio.NewReaderSize(strings.NewReader(tt.in), 4096))
			if (err != nil) != tt.fail {
				t.Fatalf("err = %v, want failure %v", err, tt.fail)
			}
			if err != nil {
				return
			}
			if msg.Event != tt.event || string(msg.Return) != tt.ret {
				t.Fatalf("message %+v", msg)
			}
			if tt.errClass != "" && (msg.Error == nil || msg.Error.Class != tt.errClass) {
				t.Fatalf("error %+v, want class %s", msg.Error, tt.errClass)
			}
		})
	}
}

func FuzzReadQMP(f *testing.F) {
	f.Add([]byte(`{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": []}}` + "\n"))
	f.Add([]byte(`{"return": {"status": "completed", "ram": {"total": 1, "transferred": 2}}, "id": 9}` + "\n"))
	f.Add([]byte(`{"event": "SHUTDOWN"}` + "\n" + `{"return": {}}` + "\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bufio.NewReaderSize(bytes.NewReader(b), 256)
		for range 8 {
			if _, err := readQMP(r); err != nil {
				return
			}
		}
	})
}

func TestDecodeDefinition(t *testing.T) {
	id := vm.NewID()
	good := definition{Config: vm.Config{ID: id, MemoryMB: 64, DiskMB: 40, MAC: vm.MACFor(id)}, Disk: "disk.raw", DiskFormat: "raw", Kernel: "vmlinuz", CPUs: 1}
	tests := []struct {
		name   string
		mutate func(*definition)
		ok     bool
	}{
		{"good", func(*definition) {}, true},
		{"other vm", func(d *definition) { d.Config.ID = vm.NewID() }, false},
		{"disk path escapes", func(d *definition) { d.Disk = "../../etc/shadow" }, false},
		{"absolute kernel", func(d *definition) { d.Kernel = "/boot/vmlinuz" }, false},
		{"hidden file", func(d *definition) { d.Initrd = ".state.json" }, false},
		{"option injection", func(d *definition) { d.Disk = "disk.raw,file.driver=ssh" }, false},
		{"format", func(d *definition) { d.DiskFormat = "vmdk" }, false},
		{"no cpus", func(d *definition) { d.CPUs = 0 }, false},
		{"bad config", func(d *definition) { d.Config.MemoryMB = 0 }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := good
			tt.mutate(&d)
			b, _ := json.Marshal(d)
			_, err := decodeDefinition(bytes.NewReader(b), id)
			if (err == nil) != tt.ok {
				t.Fatalf("err = %v, want ok %v", err, tt.ok)
			}
		})
	}
	big := append([]byte(`{"config":{"name":"`), bytes.Repeat([]byte("x"), maxDefBytes)...)
	if _, err := decodeDefinition(bytes.NewReader(big), id); err == nil {
		t.Fatal("oversized vm.json accepted")
	}
}

func FuzzDecodeDefinition(f *testing.F) {
	id, _ := vm.ParseID("0123abcd-4567-89ef-0123-456789abcdef")
	good, _ := json.Marshal(definition{Config: vm.Config{ID: id, MemoryMB: 64, DiskMB: 40, MAC: vm.MACFor(id)}, Disk: "disk.raw", DiskFormat: "raw", CPUs: 1})
	f.Add(good)
	f.Add([]byte(`{"disk":"../x"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		def, err := decodeDefinition(bytes.NewReader(b), id)
		if err != nil {
			return
		}
		for _, name := range []string{def.Disk, def.Kernel, def.Initrd} {
			if strings.ContainsAny(name, "/,=") || strings.HasPrefix(name, ".") {
				t.Fatalf("accepted file name %q", name)
			}
		}
	})
}
