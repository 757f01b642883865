package node

import (
	"errors"
	"strings"
)

// FieldError says which field of a request is wrong, so that a form can show the message
// beside the field: the API answers the fields of an error in ErrorBody.Fields. Field is the
// field's JSON name; a FieldError whose Err holds FieldErrors names a nested object, and its
// fields are answered dotted ("terms.speed_price").
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string { return e.Field + " " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

// Fields returns the problem of each field that err names (nil if none), keyed by dotted
// JSON name. A field named twice keeps its first problem.
func Fields(err error) map[string]string {
	out := map[string]string{}
	collectFields(err, "", out)
	if len(out) == 0 {
		return nil
	}
	return out
}

func collectFields(err error, prefix string, out map[string]string) {
	switch e := err.(type) {
	case nil:
	case *FieldError:
		name := prefix + e.Field
		before := len(out)
		collectFields(e.Err, name+".", out)
		if len(out) == before {
			if _, ok := out[name]; !ok {
				out[name] = e.Err.Error()
			}
		}
	case interface{ Unwrap() []error }:
		for _, x := range e.Unwrap() {
			collectFields(x, prefix, out)
		}
	case interface{ Unwrap() error }:
		collectFields(e.Unwrap(), prefix, out)
	}
}

// Problems gathers what is wrong with the fields of a request, to answer all of them at once.
// The zero value is ready to use.
type Problems struct{ list []error }

// Add records field's problem, a message that follows the field's name ("out of range 1..8").
func (p *Problems) Add(field, problem string) {
	p.list = append(p.list, &FieldError{Field: field, Err: errors.New(problem)})
}

// Put records err, a problem that may name its field (a *FieldError) or not; nil is nothing.
func (p *Problems) Put(err error) {
	if err != nil {
		p.list = append(p.list, err)
	}
}

// Nest records the problems of a nested object (an error from its own validation), under
// field: its fields become "field.name".
func (p *Problems) Nest(field string, err error) {
	pe, ok := err.(*problemsError)
	if !ok {
		if err != nil {
			p.list = append(p.list, &FieldError{Field: field, Err: err})
		}
		return
	}
	for _, e := range pe.list {
		if fe, ok := e.(*FieldError); ok {
			p.list = append(p.list, &FieldError{Field: field + "." + fe.Field, Err: fe.Err})
		} else {
			p.list = append(p.list, &FieldError{Field: field, Err: e})
		}
	}
}

// Err is nil if nothing was recorded, else one error that wraps kind (for errors.Is) and says
// "kind: what: each problem; ...".
func (p *Problems) Err(kind error, what string) error {
	if len(p.list) == 0 {
		return nil
	}
	msgs := make([]string, len(p.list))
	for i, e := range p.list {
		msgs[i] = e.Error()
	}
	return &problemsError{kind: kind, msg: kind.Error() + ": " + what + ": " + strings.Join(msgs, "; "), list: p.list}
}

type problemsError struct {
	kind error
	msg  string
	list []error
}

func (e *problemsError) Error() string   { return e.msg }
func (e *problemsError) Unwrap() []error { return append([]error{e.kind}, e.list...) }
