package wire

import (
	"encoding/base64"
	"errors"
	"net"
	"strings"
	"testing"

	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/primitive"
)

// exchange is one round trip of a scripted server: the command it expects (name, and the
// payload decoded, "" for an empty one) and the answer it gives.
type exchange struct {
	cmd, payload string
	reply        bson.M
}

// scripted listens on loopback, answers one connection's OP_QUERY commands in order and sends
// what it received (command name and payload) to the returned channel.
func scripted(t *testing.T, script []exchange) (net.Conn, <-chan []string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	got := make(chan []string, 1)
	go func() {
		var seen []string
		defer func() { got <- seen }()
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		for _, ex := range script {
			h, body, err := ReadMessage(c)
			if err != nil {
				return
			}
			coll, q, err := ParseQuery(body)
			if err != nil {
				return
			}
			name := q.Index(0).Key()
			_, payload := q.Lookup("payload").Binary()
			seen = append(seen, coll+" "+name+" "+string(payload))
			if name != ex.cmd || string(payload) != ex.payload {
				t.Errorf("got %s %q, want %s %q", name, payload, ex.cmd, ex.payload)
			}
			if name == "saslStart" {
				if skip, _ := q.Lookup("options", "skipEmptyExchange").BooleanOK(); !skip {
					t.Errorf("saslStart without options.skipEmptyExchange: true (auth spec): %s", q)
				}
			}
			msg, _ := ReplyMessage(h.RequestID, ex.reply)
			if _, err := c.Write(msg); err != nil {
				return
			}
		}
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, got
}

func b64(t *testing.T, s string) string {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func bin(s string) primitive.Binary { return primitive.Binary{Data: []byte(s)} }

// The MongoDB authentication specification's SCRAM-SHA-1 conversation (source/auth/auth.md,
// "SCRAM-SHA-1" / "Conversation" and "Backwards Compatibility"): user "user", password
// "pencil", client nonce "fyko+d2lbbFgONRv9qkxdawL". The payloads below are the spec's BinData,
// so a client deriving its key from anything but hex(md5("user:mongo:pencil")) sends another
// proof and fails.
const (
	specClientFirst = "biwsbj11c2VyLHI9ZnlrbytkMmxiYkZnT05Sdjlxa3hkYXdM"
	specServerFirst = "cj1meWtvK2QybGJiRmdPTlJ2OXFreGRhd0xIbytWZ2s3cXZVT0tVd3VXTElXZzRsLzlTcmFHTUhFRSxzPXJROVpZM01udEJldVAzRTFURFZDNHc9PSxpPTEwMDAw"
	specClientFinal = "Yz1iaXdzLHI9ZnlrbytkMmxiYkZnT05Sdjlxa3hkYXdMSG8rVmdrN3F2VU9LVXd1V0xJV2c0bC85U3JhR01IRUUscD1NQzJUOEJ2Ym1XUmNrRHc4b1dsNUlWZ2h3Q1k9"
	specServerFinal = "dj1VTVdlSTI1SkQxeU5ZWlJNcFo0Vkh2aFo5ZTA9"
	specNonce       = "fyko+d2lbbFgONRv9qkxdawL"
)

func TestSCRAMSHA1KnownAnswer(t *testing.T) {
	if d := PasswordDigest("user", "pencil"); d != "1c33006ec1ffd90f9cadcbcc0e118200" {
		// md5("user:mongo:pencil"), computed independently with md5sum.
		t.Fatalf("PasswordDigest = %s", d)
	}
	auth := SCRAMSHA1{Source: "admin", User: "user", Password: "pencil", nonce: func() string { return specNonce }}
	t.Run("3.x: the extra empty saslContinue", func(t *testing.T) {
		c, got := scripted(t, []exchange{
			{"saslStart", b64(t, specClientFirst), bson.M{"conversationId": int32(1), "payload": bin(b64(t, specServerFirst)), "done": false, "ok": 1.0}},
			{"saslContinue", b64(t, specClientFinal), bson.M{"conversationId": int32(1), "payload": bin(b64(t, specServerFinal)), "done": false, "ok": 1.0}},
			{"saslContinue", "", bson.M{"conversationId": int32(1), "payload": bin(""), "done": true, "ok": 1.0}},
		})
		if err := auth.Authenticate(c); err != nil {
			t.Fatal(err)
		}
		c.Close()
		if seen := <-got; len(seen) != 3 || !strings.HasPrefix(seen[0], "admin.$cmd saslStart n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL") {
			t.Fatalf("conversation: %q", seen)
		}
	})
	t.Run("4.4+: done with the server signature", func(t *testing.T) {
		c, _ := scripted(t, []exchange{
			{"saslStart", b64(t, specClientFirst), bson.M{"conversationId": int32(1), "payload": bin(b64(t, specServerFirst)), "done": false, "ok": 1.0}},
			{"saslContinue", b64(t, specClientFinal), bson.M{"conversationId": int32(1), "payload": bin(b64(t, specServerFinal)), "done": true, "ok": 1.0}},
		})
		if err := auth.Authenticate(c); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("wrong server signature", func(t *testing.T) {
		c, _ := scripted(t, []exchange{
			{"saslStart", b64(t, specClientFirst), bson.M{"conversationId": int32(1), "payload": bin(b64(t, specServerFirst)), "done": false, "ok": 1.0}},
			{"saslContinue", b64(t, specClientFinal), bson.M{"conversationId": int32(1), "payload": bin("v=AAAAAAAAAAAAAAAAAAAAAAAAAAA="), "done": false, "ok": 1.0}},
		})
		if err := auth.Authenticate(c); !errors.Is(err, ErrServerUnproven) {
			t.Fatalf("want ErrServerUnproven, got %v", err)
		}
	})
	t.Run("done before any proof", func(t *testing.T) {
		c, _ := scripted(t, []exchange{
			{"saslStart", b64(t, specClientFirst), bson.M{"conversationId": int32(1), "payload": bin(b64(t, specServerFirst)), "done": true, "ok": 1.0}},
		})
		if err := auth.Authenticate(c); !errors.Is(err, ErrServerUnproven) {
			t.Fatalf("want ErrServerUnproven, got %v", err)
		}
	})
	t.Run("too few iterations: no proof is sent", func(t *testing.T) {
		c, got := scripted(t, []exchange{
			{"saslStart", b64(t, specClientFirst), bson.M{"conversationId": int32(1), "payload": bin("r=" + specNonce + "XYZ,s=rQ9ZY3MntBeuP3E1TDVC4w==,i=1000"), "done": false, "ok": 1.0}},
		})
		if err := auth.Authenticate(c); err == nil || !strings.Contains(err.Error(), "too few iterations") {
			t.Fatalf("want the iteration floor, got %v", err)
		}
		c.Close()
		if seen := <-got; len(seen) != 1 {
			t.Fatalf("sent after the challenge: %q", seen)
		}
	})
	t.Run("3.2's refusal of the proof", func(t *testing.T) {
		c, _ := scripted(t, []exchange{
			{"saslStart", b64(t, specClientFirst), bson.M{"conversationId": int32(1), "payload": bin(b64(t, specServerFirst)), "done": false, "ok": 1.0}},
			{"saslContinue", b64(t, specClientFinal), bson.M{"ok": 0.0, "code": int32(18), "errmsg": "Authentication failed."}},
		})
		var ce *CommandError
		if err := auth.Authenticate(c); !errors.As(err, &ce) || ce.Code != 18 || ce.Command != "saslContinue" {
			t.Fatalf("want saslContinue's code 18, got %v", err)
		}
	})
	t.Run("3.2's refusal", func(t *testing.T) {
		huge := strings.Repeat("x", 10000)
		c, _ := scripted(t, []exchange{
			{"saslStart", b64(t, specClientFirst), bson.M{"ok": 0.0, "code": int32(18), "errmsg": "Authentication failed." + huge}},
		})
		err := auth.Authenticate(c)
		var ce *CommandError
		if !errors.As(err, &ce) || ce.Code != 18 || len(err.Error()) > 2*MaxServerText {
			t.Fatalf("want code 18 with the text cut, got %v", err)
		}
	})
}
