package wire_test

import (
	"errors"
	"net"
	"testing"

	"github.com/haagent/haagent/internal/peertest"
	"github.com/haagent/haagent/internal/wire"
)

// The OP_QUERY SCRAM-SHA-1 client against a real server's SCRAM-SHA-1: FerretDB accepts
// saslStart/saslContinue over OP_QUERY as MongoDB does and derives its stored credentials from
// hex(md5("user:mongo:password")) with its own code (internal/util/password/scramsha1.go), so
// the digest is checked against an implementation other than the stand-in's. Its conversation
// uses xdg-go/scram too: TestSCRAMSHA1KnownAnswer remains the pin on the exchange itself.
func TestSCRAMSHA1FerretDB(t *testing.T) {
	f := peertest.StartFerretDB(t, peertest.FerretDBOptions{})
	f.CreateUser(t, "admin", "circle", "circle-Pw-3x")
	auth := func(user, pw string) error {
		c, err := net.Dial("tcp", f.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return wire.SCRAMSHA1{Source: "admin", User: user, Password: pw}.Authenticate(c)
	}
	if err := auth("circle", "circle-Pw-3x"); err != nil {
		t.Fatalf("right password: %v", err)
	}
	for _, c := range [][2]string{{"circle", "wrong-Pw"}, {"nobody", "circle-Pw-3x"}} {
		var ce *wire.CommandError
		if err := auth(c[0], c[1]); !errors.As(err, &ce) || ce.Code != 18 {
			t.Errorf("%s/%s: want code 18, got %v", c[0], c[1], err)
		}
	}
}
