package wire

import (
	"crypto/md5" //nolint:gosec // MongoDB's SCRAM-SHA-1 password digest is defined as MD5
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	"github.com/xdg-go/scram"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/primitive"
)

// ErrServerUnproven means the server ended a SCRAM conversation without proving that it holds
// the user's credentials (its signature was missing or wrong): an impostor, or a broken server.
var ErrServerUnproven = errors.New("the server did not prove it knows the password (SCRAM server signature missing or wrong)")

// SCRAMSHA1 authenticates a connection with SCRAM-SHA-1 over OP_QUERY, as MongoDB 3.0 to 3.4
// (which the Go driver refuses) expect it: saslStart and saslContinue against Source.$cmd, the
// password replaced by MongoDB's digest hex(md5("user:mongo:password")) before the RFC 5802
// exchange (MongoDB auth specification, "SCRAM-SHA-1"), and the extra empty saslContinue a 3.x
// server waits for after its "v=" answer with done: false ("Backwards Compatibility").
// github.com/xdg-go/scram, which the Go driver uses too, does the RFC 5802 part.
type SCRAMSHA1 struct {
	Source, User, Password string
	// nonce replaces the client nonce in tests that pin the spec's known-answer conversation.
	nonce func() string
}

// PasswordDigest is MongoDB's SCRAM-SHA-1 password: hex(md5(user + ":mongo:" + password)),
// neither part SASLprepped (MongoDB auth specification, "SCRAM-SHA-1").
func PasswordDigest(user, password string) string {
	sum := md5.Sum([]byte(user + ":mongo:" + password)) //nolint:gosec // see the import
	return hex.EncodeToString(sum[:])
}

// maxSASLSteps bounds the conversation: SCRAM takes two round trips, 3.x servers a third.
const maxSASLSteps = 4

// Authenticate runs the conversation on rw. A refusal (code 18 for a wrong password, an unknown
// user, or a user holding only MONGODB-CR credentials) is a *CommandError.
func (a SCRAMSHA1) Authenticate(rw io.ReadWriter) error {
	client, err := scram.SHA1.NewClientUnprepped(a.User, PasswordDigest(a.User, a.Password), "")
	if err != nil {
		return fmt.Errorf("preparing SCRAM-SHA-1 for user %q: %w", a.User, err)
	}
	// The auth specification's floor: a server (or a man in the middle) asking for fewer
	// iterations wants a proof that is cheap to brute-force.
	client.WithMinIterations(4096)
	if a.nonce != nil {
		client.WithNonceGenerator(a.nonce)
	}
	conv := client.NewConversation()
	first, err := conv.Step("")
	if err != nil {
		return fmt.Errorf("starting SCRAM-SHA-1 for user %q: %w", a.User, err)
	}
	reply, err := Command(rw, a.Source, bson.D{
		{Key: "saslStart", Value: int32(1)}, {Key: "mechanism", Value: "SCRAM-SHA-1"},
		{Key: "payload", Value: primitive.Binary{Data: []byte(first)}},
		// Servers from 4.4 on then end with "v="; older ones ignore it (auth spec).
		{Key: "options", Value: bson.D{{Key: "skipEmptyExchange", Value: true}}},
	})
	for step := 1; ; step++ {
		if err != nil {
			return fmt.Errorf("SCRAM-SHA-1 for user %q on %s: %w", a.User, a.Source, err)
		}
		var done bool
		var convID bson.RawValue
		var payload []byte
		if done, convID, payload, err = saslReply(reply); err != nil {
			return fmt.Errorf("SCRAM-SHA-1 for user %q on %s: %w", a.User, a.Source, err)
		}
		var out string
		switch {
		case !conv.Done():
			if out, err = conv.Step(string(payload)); err != nil {
				if conv.Done() {
					// The server's final message did not verify.
					return fmt.Errorf("SCRAM-SHA-1 for user %q on %s: %w (%w)", a.User, a.Source, ErrServerUnproven, err)
				}
				return fmt.Errorf("SCRAM-SHA-1 for user %q on %s: the server's challenge: %w", a.User, a.Source, err)
			}
		case len(payload) > 0:
			return fmt.Errorf("SCRAM-SHA-1 for user %q on %s: payload after the end of the conversation: %w", a.User, a.Source, ErrNotMongo)
		}
		if done {
			break
		}
		if step >= maxSASLSteps {
			return fmt.Errorf("SCRAM-SHA-1 for user %q on %s: the server did not end the conversation after %d steps: %w", a.User, a.Source, step, ErrNotMongo)
		}
		reply, err = Command(rw, a.Source, bson.D{
			{Key: "saslContinue", Value: int32(1)}, {Key: "conversationId", Value: convID},
			{Key: "payload", Value: primitive.Binary{Data: []byte(out)}},
		})
	}
	if !conv.Valid() {
		return fmt.Errorf("SCRAM-SHA-1 for user %q on %s: %w", a.User, a.Source, ErrServerUnproven)
	}
	return nil
}

// saslReply reads a saslStart/saslContinue answer. conversationId is echoed back as the server
// typed it (3.2 sends an int32, some servers a double).
func saslReply(doc bson.Raw) (done bool, convID bson.RawValue, payload []byte, err error) {
	if v, lerr := doc.LookupErr("done"); lerr == nil {
		done, _ = v.BooleanOK()
	}
	convID, lerr := doc.LookupErr("conversationId")
	if lerr != nil {
		return false, convID, nil, fmt.Errorf("the SASL answer has no conversationId: %w", ErrNotMongo)
	}
	pv, lerr := doc.LookupErr("payload")
	switch {
	case lerr != nil:
		return false, convID, nil, fmt.Errorf("the SASL answer has no payload: %w", ErrNotMongo)
	case pv.Type == bson.TypeBinary:
		_, payload = pv.Binary()
	case pv.Type == bson.TypeString:
		payload = []byte(pv.StringValue())
	default:
		return false, convID, nil, fmt.Errorf("the SASL answer's payload is a %s: %w", pv.Type, ErrNotMongo)
	}
	return done, convID, payload, nil
}
