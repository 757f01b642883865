package ledger

import _ "github.com/hashicorp/raft" // the coordinator's consensus
