package node

import (
	"errors"
	"fmt"
	"sync"
	"testing"
)

func openTestStore(t testing.TB, dir string) *Store {
	t.Helper()
	s, err := OpenStore(dir, nil)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	return s
}

func TestStoreSpaces(t *testing.T) {
	s := openTestStore(t, t.TempDir())
	t.Cleanup(func() { s.Close() })
	a, b := s.Space("a/"), s.Space("b/")

	if _, err := a.Get("k"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get missing key: got %v, want ErrNotFound", err)
	}
	if err := a.Put("k", []byte("va")); err != nil {
		t.Fatal(err)
	}
	if err := b.Put("k", []byte("vb")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		sp   *Space
		want string
	}{{"a", a, "va"}, {"b", b, "vb"}} {
		got, err := tc.sp.Get("k")
		if err != nil || string(got) != tc.want {
			t.Errorf("%s: Get = %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
	var keys []string
	if err := a.List(func(k string, _ []byte) error { keys = append(keys, k); return nil }); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(keys) != "[k]" {
		t.Errorf("List(a) = %v, want [k] (spaces must not leak into each other)", keys)
	}
	if err := a.Delete("k"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Get("k"); !errors.Is(err, ErrNotFound) {
		t.Errorf("after Delete: %v, want ErrNotFound", err)
	}
	if err := a.Put("big", make([]byte, MaxValueSize+1)); err == nil {
		t.Error("Put over the value cap succeeded")
	}
}

func TestStoreUpdateIsAtomic(t *testing.T) {
	s := openTestStore(t, t.TempDir())
	t.Cleanup(func() { s.Close() })
	sp := s.Space("n/")
	if err := PutJSON(sp, "count", 0); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	err := sp.Update(func(tx *Txn) error {
		if err := tx.Put("count", []byte("99")); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update error = %v, want boom", err)
	}
	if n, _ := GetJSON[int](sp, "count"); n != 0 {
		t.Fatalf("failed Update left count=%d, want 0", n)
	}

	// Concurrent read-modify-write increments must not lose updates.
	const workers, each = 4, 25
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range each {
				err := sp.Update(func(tx *Txn) error {
					n, err := GetJSON[int](tx, "count")
					if err != nil {
						return err
					}
					return PutJSON(tx, "count", n+1)
				})
				if err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if n, _ := GetJSON[int](sp, "count"); n != workers*each {
		t.Fatalf("count = %d, want %d", n, workers*each)
	}
}

func TestStoreLockedAndPersistent(t *testing.T) {
	dir := t.TempDir()
	s := openTestStore(t, dir)
	if err := s.Space("x/").Put("k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenStore(dir, nil); !errors.Is(err, ErrHomeLocked) {
		t.Fatalf("second open: %v, want ErrHomeLocked", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := openTestStore(t, dir)
	t.Cleanup(func() { s2.Close() })
	if v, err := s2.Space("x/").Get("k"); err != nil || string(v) != "v" {
		t.Fatalf("after reopen: %q, %v", v, err)
	}
}

// TestStoreScan: ranges forwards and backwards stay inside the space and the bounds, and
// ErrStop ends a scan without an error.
func TestStoreScan(t *testing.T) {
	s := openTestStore(t, t.TempDir())
	t.Cleanup(func() { s.Close() })
	a := s.Space("a/")
	for _, sp := range []*Space{s.Space("0/"), a, s.Space("b/")} {
		for _, k := range []string{"k1", "k2", "k3", "k4"} {
			if err := sp.Put(k, []byte(k)); err != nil {
				t.Fatal(err)
			}
		}
	}
	scan := func(from, to string, reverse bool, max int) string {
		var keys []string
		err := a.View(func(tx *Txn) error {
			return tx.Scan(from, to, reverse, func(k string, v []byte) error {
				if string(v) != k {
					t.Errorf("key %s holds %q", k, v)
				}
				if keys = append(keys, k); len(keys) == max {
					return ErrStop
				}
				return nil
			})
		})
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprint(keys)
	}
	for _, tc := range []struct {
		from, to string
		reverse  bool
		max      int
		want     string
	}{
		{"", "", false, 0, "[k1 k2 k3 k4]"},
		{"k2", "k4", false, 0, "[k2 k3]"},
		{"k2", "", false, 1, "[k2]"},
		{"", "", true, 0, "[k4 k3 k2 k1]"},
		{"", "k3", true, 0, "[k2 k1]"},
		{"k2", "k4", true, 0, "[k3 k2]"},
		{"", "", true, 1, "[k4]"},
		{"k5", "", false, 0, "[]"},
	} {
		if got := scan(tc.from, tc.to, tc.reverse, tc.max); got != tc.want {
			t.Errorf("Scan(%q, %q, reverse %v, stop after %d) = %s, want %s", tc.from, tc.to, tc.reverse, tc.max, got, tc.want)
		}
	}
}
