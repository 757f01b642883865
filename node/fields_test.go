package node_test

import (
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/virtuoso-market/virtuoso/node"
)

var errBad = errors.New("invalid value")

func TestFields(t *testing.T) {
	terms := func() error {
		var p node.Problems
		p.Add("speed_unit", "0 out of range 1..8")
		p.Put(errors.New("a problem of no field"))
		return p.Err(errBad, "terms")
	}
	machine := func() error {
		var p node.Problems
		p.Put(&node.FieldError{Field: "name", Err: errors.New("is empty")})
		p.Nest("terms", terms())
		p.Nest("capacity", errors.New("is locked"))
		p.Nest("none", nil)
		return p.Err(errBad, "machine")
	}
	for _, tc := range []struct {
		name string
		err  error
		want map[string]string
		msg  string
	}{
		{"none", errors.New("plain"), nil, "plain"},
		{"nil", nil, nil, ""},
		{"no problems", (&node.Problems{}).Err(errBad, "x"), nil, ""},
		{"nested and wrapped", fmt.Errorf("add: %w", node.WithStatus(400, machine())), map[string]string{
			"name": "is empty", "terms.speed_unit": "0 out of range 1..8", "terms": "a problem of no field", "capacity": "is locked",
		}, "add: invalid value: machine: name is empty; terms.speed_unit 0 out of range 1..8; terms a problem of no field; capacity is locked"},
		{"joined", errors.Join(&node.FieldError{Field: "a", Err: errors.New("x")}, &node.FieldError{Field: "a", Err: errors.New("y")}),
			map[string]string{"a": "x"}, "a x\na y"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := node.Fields(tc.err); !maps.Equal(got, tc.want) {
				t.Errorf("Fields = %v, want %v", got, tc.want)
			}
			if tc.err != nil && tc.err.Error() != tc.msg {
				t.Errorf("message %q, want %q", tc.err.Error(), tc.msg)
			}
			if tc.name == "nested and wrapped" && !errors.Is(tc.err, errBad) {
				t.Error("the problems do not wrap their kind")
			}
		})
	}
}

// TestDecodeJSONNamesTheField: a value of the wrong type is a problem of its field, dotted.
func TestDecodeJSONNamesTheField(t *testing.T) {
	type inner struct {
		Price int64 `json:"price"`
	}
	var v struct {
		Terms inner `json:"terms"`
	}
	r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(`{"terms":{"price":"abc"}}`))
	err := node.DecodeJSON(r, &v)
	rec := httptest.NewRecorder()
	node.WriteError(rec, err)
	if rec.Code != 400 || !strings.Contains(rec.Body.String(), `"terms.price": "got string, want a whole number"`) {
		t.Fatalf("answer %d %s", rec.Code, rec.Body)
	}
}
