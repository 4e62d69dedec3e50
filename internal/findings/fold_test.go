package findings

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestFold(t *testing.T) {
	dns := New(DNSNotFound, "circle@db.internal:5432", "db.internal does not resolve", "").WithHost("db.internal")
	refused := New(TCPRefused, "circle@db.internal:5432", "db.internal:5432 refused the connection", "").WithHost("db.internal:5432")
	tlsBad := New(TLSUnknownAuthority, "https://vault:8200", "unknown CA", "").WithHost("vault:8200")
	auth := New(PGAuthFailed, "circle@db.internal:5432", "PostgreSQL rejected the password", "").WithHost("db.internal:5432")
	missing := New(PGDatabaseMissing, "circle@db.internal:5432/circle", "no database circle", "").WithSeverity(Warning).WithHost("db.internal:5432")
	otherPort := New(PGAuthFailed, "circle@db.internal:6432", "rejected at the pooler", "").WithHost("db.internal:6432")
	otherHost := New(PGAuthFailed, "circle@db2:5432", "rejected", "").WithHost("db2:5432")
	sealed := New(VaultSealed, "https://vault:8200", "sealed", "").WithHost("VAULT:8200")
	noHost := New(PGAuthFailed, "", "no host known", "")
	mongoRefused := New(TCPRefused, "mongo:27017", "refused", "").WithHost("mongo:27017")
	mongoTLS := New(TLSUnknownAuthority, "mongo:27017", "unknown CA", "").WithHost("mongo:27017")
	replset := New(MongoReplsetMismatch, "mongo:27017?replicaSet=rs0", "the set is rs1", "").WithHost("mongo:27017")
	keys := New(KeysConflict, "k", "conflict", "").WithHost("db.internal:5432") // no DependsOn

	for _, c := range []struct {
		name string
		in   []Finding
		// want: the codes and hosts left, each with the codes folded into it
		want string
	}{
		{"nothing upstream", []Finding{auth, missing}, "PG_AUTH_FAILED@db.internal:5432 PG_DATABASE_MISSING@db.internal:5432"},
		{"dns covers every port of its host", []Finding{auth, dns, otherPort, otherHost}, "DNS_NOT_FOUND@db.internal[PG_AUTH_FAILED,PG_AUTH_FAILED] PG_AUTH_FAILED@db2:5432"},
		{"tcp covers its port only", []Finding{refused, auth, otherPort}, "TCP_REFUSED@db.internal:5432[PG_AUTH_FAILED] PG_AUTH_FAILED@db.internal:6432"},
		{"tls, host compared without case", []Finding{sealed, tlsBad}, "TLS_UNKNOWN_AUTHORITY@vault:8200[VAULT_SEALED]"},
		{"no host, no fold", []Finding{dns, noHost}, "DNS_NOT_FOUND@db.internal PG_AUTH_FAILED@"},
		{"a code without DependsOn stays", []Finding{refused, keys}, "TCP_REFUSED@db.internal:5432 KEYS_CONFLICT@db.internal:5432"},
		// Two upstream findings of the same layer for different servers: both stay, nothing
		// folds into the other (neither depends on TCP_REFUSED).
		// MongoDB's probe goes on unverified and what it learns there has a fix of its own.
		{"mongo after a certificate failure", []Finding{mongoTLS, replset}, "TLS_UNKNOWN_AUTHORITY@mongo:27017 MONGO_REPLSET_MISMATCH@mongo:27017"},
		{"mongo after a refusal", []Finding{replset, mongoRefused}, "TCP_REFUSED@mongo:27017[MONGO_REPLSET_MISMATCH]"},
		{"independent upstreams", []Finding{refused, mongoRefused}, "TCP_REFUSED@db.internal:5432 TCP_REFUSED@mongo:27017"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var got []string
			for _, f := range Fold(c.in) {
				s := f.Code.String() + "@" + f.Host
				if len(f.Suppressed) > 0 {
					var cs []string
					for _, l := range f.Suppressed {
						code, _, _ := strings.Cut(l, " ")
						cs = append(cs, code)
					}
					s += "[" + strings.Join(cs, ",") + "]"
				}
				got = append(got, s)
			}
			if g := strings.Join(got, " "); g != c.want {
				t.Errorf("Fold = %s\nwant   %s", g, c.want)
			}
		})
	}
}

// A folded finding is still there to read: its line in the upstream's Suppressed and in the
// JSON of the record, redacted; and the upstream blocks when what it absorbed blocked, so
// folding never lets an install go on that would have stopped.
func TestFoldKeepsWhatItHides(t *testing.T) {
	tlsBad := New(TLSUnknownAuthority, "https://vault:8200", "the certificate of vault:8200 is signed by an unknown CA", "").WithHost("vault:8200")
	sealed := New(VaultSealed, "https://vault:8200", "Vault at postgres://u:Hunter2SECRET@x/ is sealed", "").WithHost("vault:8200")
	if tlsBad.Blocking || !sealed.Blocking {
		t.Fatal("the catalogue changed: this test needs a non-blocking upstream and a blocking downstream")
	}
	in := []Finding{tlsBad, sealed}
	out := Fold(in)
	if len(out) != 1 {
		t.Fatalf("%d findings, want 1: %+v", len(out), out)
	}
	f := out[0]
	if !f.Blocking || f.Severity != Error {
		t.Errorf("the upstream does not block although what it absorbed did: %+v", f)
	}
	if len(f.Suppressed) != 1 || !strings.HasPrefix(f.Suppressed[0], "VAULT_SEALED Vault at postgres://u:xxxxx@x/ is sealed [https://vault:8200]") {
		t.Errorf("suppressed %q", f.Suppressed)
	}
	raw := f
	raw.Suppressed = []string{"VAULT_SEALED postgres://u:Hunter2SECRET@x/"}
	b, _ := json.Marshal(raw)
	if strings.Contains(string(b), "Hunter2SECRET") || !strings.Contains(string(b), `"suppressed":["VAULT_SEALED postgres://u:xxxxx@x/"]`) {
		t.Errorf("JSON %s", b)
	}
	if in[0].Blocking || len(in[0].Suppressed) != 0 {
		t.Errorf("Fold changed its argument: %+v", in[0])
	}
	// Folding again (a retried step, a Failure reported after its findings) adds nothing.
	if again := Fold(append(out, sealed)); len(again) != 1 || len(again[0].Suppressed) != 1 {
		t.Errorf("a second fold: %+v", again)
	}
}
