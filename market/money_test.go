package market

import (
	"encoding/json"
	"errors"
	"math"
	"testing"
)

func TestMoneyString(t *testing.T) {
	for _, tc := range []struct {
		name string
		m    Money
		want string
	}{
		{"zero", 0, "0.00"},
		{"one micro", 1, "0.000001"},
		{"quarter", 250_000, "0.25"},
		{"whole", 12 * Unit, "12.00"},
		{"negative", -1_500_000, "-1.50"},
		{"max", Money(math.MaxInt64), "9223372036854.775807"},
		{"min", Money(math.MinInt64), "-9223372036854.775808"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.m.String(); got != tc.want {
				t.Fatalf("String() = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestParseMoney(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Money
		wantErr bool
	}{
		{"0", 0, false},
		{"0.25", 250_000, false},
		{".5", 500_000, false},
		{"3.", 3 * Unit, false},
		{"+1.000001", 1_000_001, false},
		{"-2", -2 * Unit, false},
		{" 7 ", 7 * Unit, false},
		{"0.0000001", 0, true}, // would round
		{"", 0, true},
		{".", 0, true},
		{"1e3", 0, true},
		{"1,5", 0, true},
		{"9223372036855", 0, true},
		{"--1", 0, true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseMoney(tc.in)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Fatalf("ParseMoney(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestMoneyJSONIsMicroUnits(t *testing.T) {
	b, err := json.Marshal(struct{ P Money }{1_500_000})
	if err != nil || string(b) != `{"P":1500000}` {
		t.Fatalf("marshal: %s, %v", b, err)
	}
	var v struct{ P Money }
	if err := json.Unmarshal([]byte(`{"P":"1.5"}`), &v); err == nil {
		t.Fatal("a decimal string was accepted where micro-units are expected")
	}
}

func TestMulCountOverflow(t *testing.T) {
	if _, err := mulCount(MaxPrice, 1<<40); !errors.Is(err, ErrOverflow) {
		t.Fatalf("MaxPrice × 2^40: err = %v, want ErrOverflow", err)
	}
	if got, err := mulCount(3, 4); err != nil || got != 12 {
		t.Fatalf("3 × 4 = %v, %v", got, err)
	}
}

func FuzzParseMoney(f *testing.F) {
	for _, s := range []string{"0", "0.25", "-1.000001", "9223372036854.775807", "1e3", ".", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseMoney(s)
		if err != nil {
			return
		}
		back, err := ParseMoney(m.String())
		if err != nil || back != m {
			t.Fatalf("%q → %v → %q → %v, %v", s, int64(m), m.String(), int64(back), err)
		}
	})
}

// TestMoneyJSONForms: an amount that is not an integer of micro-units is an error the decoder
// names the field of.
func TestMoneyJSONForms(t *testing.T) {
	var v struct {
		Price Money `json:"price"`
	}
	for _, tc := range []struct {
		in   string
		want Money
		err  bool
	}{
		{`{"price":250000}`, 250_000, false},
		{`{"price":"0.25"}`, 0, true},
		{`{"price":"abc"}`, 0, true},
		{`{"price":"0.0000001"}`, 0, true},
		{`{"price":1.5}`, 0, true},
		{`{"price":true}`, 0, true},
	} {
		v.Price = 0
		err := json.Unmarshal([]byte(tc.in), &v)
		if tc.err {
			te, ok := errors.AsType[*json.UnmarshalTypeError](err)
			if !ok || te.Field != "price" {
				t.Errorf("%s: %v, want a type error of field price", tc.in, err)
			}
			continue
		}
		if err != nil || v.Price != tc.want {
			t.Errorf("%s: %s, %v; want %s", tc.in, v.Price, err, tc.want)
		}
	}
}
