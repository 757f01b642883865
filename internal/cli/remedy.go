package cli

import (
	"errors"
	"fmt"
	"strings"

	"github.com/virtuoso-market/virtuoso/node"
)

// vmError is a failed action on the VM the user named, so that the remedy can name it and
// the command too.
type vmError struct {
	cmd, id string // "virtuoso vm" or "virtuoso vm --local"; the VM as the user gave it
	err     error
}

func (e *vmError) Error() string { return e.err.Error() }
func (e *vmError) Unwrap() error { return e.err }

func vmFailed(id string, err error) error { return &vmError{cmd: "virtuoso vm", id: id, err: err} }

func localVMFailed(id string, err error) error {
	return &vmError{cmd: "virtuoso vm --local", id: id, err: err}
}

// remedies tell the user what to do about an error the node answered, by its code (the
// codes of packages market, vm and node). In them, `virtuoso vm` stands for the command the user
// ran and ID for the VM it named.
var remedies = map[string]string{
	"state_unusable":          "the saved memory state is unusable: `virtuoso vm resume --fresh ID` boots the vm from its disk instead (what was in its memory is lost)",
	"missing_file":            "a file of the vm is missing on its provider; nothing changed: ask the provider to put it back, then try again",
	"illegal_action":          "`virtuoso vm ls` shows what each vm can do now",
	"stale":                   "the provider's prices changed: search again (`virtuoso search --config NAME`) and store at the current prices",
	"no_capacity":             "pick another machine from `virtuoso search --config NAME`",
	"unavailable":             "the other node did not answer: try again later; `virtuoso vm ls --cached` shows the last known statuses",
	"coordinator_unreachable": "no coordinator answered: check [ledger] coordinators in this node's config.toml (full addresses ending in /p2p/ID) and that a coordinator runs (`virtuoso ledger status`)",
	"not_provider":            "this node does not sell machines: stop it, set roles.provider = true in its config.toml (or `virtuoso init --provider`), and start it again",
	"console_busy":            "every console slot of the provider is in use: try again when one closes",
	"pending":                 "the provider is still creating the vm: try again in a moment",
	"buyer_limit":             "this provider admits no more from one buyer until payments settle: store on another machine from `virtuoso search --config NAME`",
	"suspend_refused":         "the guest refused to suspend (it may still be booting): try again in a moment, or stop it",
	"image_missing":           "this provider does not hold the image: pick another machine from `virtuoso search --config NAME`",
	"machine_in_use":          "the machine still stores vms: `virtuoso machine rm --force ID` stops and deletes them, notifying their owners",
	"low_balance":             "your balance does not pay the first storage period: `virtuoso account` shows it; ask a coordinator's operator for a deposit",
	"invalid_query":           "`virtuoso events --help` lists the kinds of records and the flags",
	"migrating":               "a migration of the vm is under way: `virtuoso migrate --status ID` shows its step; the node finishes or reverts it by itself",
	"reverted":                "nothing moved and nothing is charged twice: `virtuoso migrate ID` lists other destinations; try again, or pick another",
}

// remedy is the advice for err, or "".
func remedy(err error) string {
	he, ok := errors.AsType[*node.HTTPError](err)
	if !ok {
		return ""
	}
	r := remedies[he.Code]
	if ve, ok := errors.AsType[*vmError](err); ok {
		r = strings.ReplaceAll(r, "`virtuoso vm ", "`"+ve.cmd+" ")
		r = strings.ReplaceAll(r, " ID`", " "+ve.id+"`")
	}
	return r
}

// printFailure writes a failed command's error and, when the node's answer has a known code,
// what to do about it.
func printFailure(env Env, cmd string, err error) {
	fmt.Fprintf(env.Stderr, "virtuoso %s: %v\n", cmd, oneLine(err))
	if r := remedy(err); r != "" {
		fmt.Fprintf(env.Stderr, "  %s\n", r)
	}
}
