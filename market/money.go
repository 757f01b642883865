package market

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"math/bits"
	"reflect"
	"strconv"
	"strings"
)

// Money is an amount in micro-units (one millionth of the marketplace's currency unit). It is
// an integer on purpose: prices, charges and balances add up exactly and nothing is rounded
// away. JSON carries it as that integer; people read and type it as a decimal ("0.25").
type Money int64 // micro-units

// Unit is one whole currency unit.
const Unit Money = 1_000_000

// MaxPrice caps a price per chunk in offers and leases: 10^6 units, far beyond any real price,
// small enough that sums over a few thousand chunks and periods cannot overflow unnoticed.
const MaxPrice Money = 1_000_000 * Unit

// ErrOverflow means an amount does not fit in Money.
var ErrOverflow = errors.New("amount out of range")

// String writes the amount as a decimal with at least two and at most six fractional digits:
// "12.50", "0.000001", "-3.00".
func (m Money) String() string {
	neg := m < 0
	u := uint64(m)
	if neg {
		u = -u
	}
	whole, frac := u/1_000_000, u%1_000_000
	f := fmt.Sprintf("%06d", frac)
	f = strings.TrimRight(f, "0")
	for len(f) < 2 {
		f += "0"
	}
	s := strconv.FormatUint(whole, 10) + "." + f
	if neg {
		s = "-" + s
	}
	return s
}

// ParseMoney parses a decimal amount ("3", "0.25", "-1.000001"). More than six fractional
// digits is an error rather than a silent rounding.
func ParseMoney(text string) (Money, error) {
	s := strings.TrimSpace(text)
	bad := func(why string) (Money, error) {
		return 0, fmt.Errorf("amount %q: %s; write it like 0.25 (at most 6 decimals)", truncate(text), why)
	}
	if s == "" {
		return bad("empty")
	}
	neg := false
	switch s[0] {
	case '-':
		neg, s = true, s[1:]
	case '+':
		s = s[1:]
	}
	whole, frac, hasDot := strings.Cut(s, ".")
	if whole == "" && (!hasDot || frac == "") {
		return bad("no digits")
	}
	if len(frac) > 6 {
		return bad("more than 6 decimals")
	}
	for _, part := range []string{whole, frac} {
		for _, c := range part {
			if c < '0' || c > '9' {
				return bad("not a number")
			}
		}
	}
	var w uint64
	if whole != "" {
		var err error
		if w, err = strconv.ParseUint(whole, 10, 64); err != nil || w > math.MaxInt64/1_000_000 {
			return bad("too large")
		}
	}
	f := uint64(0)
	if frac != "" {
		v, _ := strconv.ParseUint(frac+strings.Repeat("0", 6-len(frac)), 10, 64)
		f = v
	}
	v := int64(w*1_000_000 + f)
	if v < 0 {
		return bad("too large")
	}
	if neg {
		v = -v
	}
	return Money(v), nil
}

// MarshalText writes the decimal form, for flags and text formats; JSON uses the integer.
func (m Money) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText parses the decimal form.
func (m *Money) UnmarshalText(text []byte) error {
	v, err := ParseMoney(string(text))
	if err != nil {
		return err
	}
	*m = v
	return nil
}

// MarshalJSON writes the integer number of micro-units.
func (m Money) MarshalJSON() ([]byte, error) { return strconv.AppendInt(nil, int64(m), 10), nil }

// UnmarshalJSON reads an integer number of micro-units. Anything else (the decimal form
// included: JSON is for programs, which send the exact integer) is a *json.UnmarshalTypeError,
// which the JSON decoder names the field of.
func (m *Money) UnmarshalJSON(b []byte) error {
	v, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return &json.UnmarshalTypeError{Value: truncate(string(b)), Type: reflect.TypeFor[Money]()}
	}
	*m = Money(v)
	return nil
}

// JSONForm says what a Money field of a request takes, for the message of a wrong one.
func (Money) JSONForm() string { return "an integer number of micro-units" }

// mulCount multiplies a non-negative amount by a non-negative count, failing on overflow.
func mulCount(m Money, n int64) (Money, error) {
	if m < 0 || n < 0 {
		return 0, fmt.Errorf("%w: negative factor", ErrOverflow)
	}
	hi, lo := bits.Mul64(uint64(m), uint64(n))
	if hi != 0 || lo > math.MaxInt64 {
		return 0, fmt.Errorf("%w: %s × %d", ErrOverflow, m, n)
	}
	return Money(lo), nil
}

// addMoney adds two non-negative amounts, failing on overflow.
func addMoney(a, b Money) (Money, error) {
	s := a + b
	if a < 0 || b < 0 || s < a {
		return 0, fmt.Errorf("%w: %s + %s", ErrOverflow, a, b)
	}
	return s, nil
}

// ceilDiv is ⌈a/b⌉ for a ≥ 0, b > 0.
func ceilDiv(a, b int64) int64 {
	if a <= 0 {
		return 0
	}
	return (a-1)/b + 1
}

// ratio returns round(m × num / (den[0] × den[1] × …)), halves rounded up, for positive
// denominators: the pro-rata conversions of averages (per hour, per GB), which are guidance and
// never charged. Computed in big integers, so no intermediate product overflows.
func ratio(m Money, num int64, den ...int64) Money {
	x := new(big.Int).Mul(big.NewInt(int64(m)), big.NewInt(num))
	d := big.NewInt(1)
	for _, v := range den {
		d.Mul(d, big.NewInt(v))
	}
	x.Mul(x, big.NewInt(2)).Add(x, d)
	x.Div(x, d.Mul(d, big.NewInt(2)))
	if !x.IsInt64() {
		return Money(math.MaxInt64)
	}
	return Money(x.Int64())
}

// truncate keeps error messages about untrusted text short.
func truncate(s string) string {
	const max = 64
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}
