package mpsclient

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// commonParameters are Alibaba Cloud RPC parameters: part of an MPS call, not of its body.
var commonParameters = map[string]bool{
	"Action": true, "Version": true, "Format": true, "RegionId": true, "AccessKeyId": true,
	"Signature": true, "SignatureMethod": true, "SignatureVersion": true, "SignatureNonce": true,
	"Timestamp": true, "SecurityToken": true, "OwnerId": true, "OwnerAccount": true,
	"ResourceOwnerId": true, "ResourceOwnerAccount": true,
}

// FromMPS fills msg from an MPS JSON document. Beyond the proto3 JSON mapping (which already
// takes element names and "1000" for integers) it accepts MPS's "true"/"false" strings for
// flags, nested objects written as JSON text, comma-separated id lists and MPS's one-key list
// wrappers, and it drops the RPC common parameters (Action, Version, ...). Unknown elements
// are an error.
func FromMPS(doc []byte, msg proto.Message) error {
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	var value any
	if err := dec.Decode(&value); err != nil {
		return fmt.Errorf("MPS JSON: %w", err)
	}
	if top, ok := value.(map[string]any); ok {
		for key := range top {
			if commonParameters[key] {
				delete(top, key)
			}
		}
	}
	md := msg.ProtoReflect().Descriptor()
	normalized, err := normalizeMessage(md, value, string(md.Name()))
	if err != nil {
		return err
	}
	text, err := json.Marshal(normalized)
	if err != nil {
		return err
	}
	return protojson.Unmarshal(text, msg)
}

// ToMPS is msg's MPS JSON: the proto3 JSON mapping, whose names are the MPS element names.
func ToMPS(msg proto.Message) ([]byte, error) {
	return protojson.Marshal(msg)
}

func lowerCamel(name string) string {
	parts := strings.Split(name, "_")
	for i := 1; i < len(parts); i++ {
		if parts[i] != "" {
			parts[i] = strings.ToUpper(parts[i][:1]) + parts[i][1:]
		}
	}
	return strings.Join(parts, "")
}

func fieldFor(md protoreflect.MessageDescriptor, key string) protoreflect.FieldDescriptor {
	fields := md.Fields()
	for i := 0; i < fields.Len(); i++ {
		f := fields.Get(i)
		if key == f.JSONName() || key == string(f.Name()) || key == lowerCamel(string(f.Name())) {
			return f
		}
	}
	return nil
}

func parseJSONText(text, where string) (any, error) {
	if strings.TrimSpace(text) == "" {
		return map[string]any{}, nil
	}
	dec := json.NewDecoder(strings.NewReader(text))
	dec.UseNumber()
	var value any
	if err := dec.Decode(&value); err != nil {
		return nil, fmt.Errorf("%s: not JSON: %w", where, err)
	}
	return value, nil
}

func normalizeMessage(md protoreflect.MessageDescriptor, value any, where string) (any, error) {
	if text, ok := value.(string); ok {
		parsed, err := parseJSONText(text, where)
		if err != nil {
			return nil, err
		}
		value = parsed
	}
	doc, ok := value.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%s: expected an object, got %v", where, value)
	}
	out := make(map[string]any, len(doc))
	for key, raw := range doc {
		field := fieldFor(md, key)
		if field == nil {
			return nil, fmt.Errorf("%s.%s: no such element in %s", where, key, md.FullName())
		}
		if raw == nil {
			continue
		}
		at := where + "." + field.JSONName()
		if field.IsList() {
			items, err := listItems(field, raw, at)
			if err != nil {
				return nil, err
			}
			list := make([]any, 0, len(items))
			for i, item := range items {
				v, err := normalizeValue(field, item, fmt.Sprintf("%s[%d]", at, i))
				if err != nil {
					return nil, err
				}
				list = append(list, v)
			}
			out[field.JSONName()] = list
			continue
		}
		v, err := normalizeValue(field, raw, at)
		if err != nil {
			return nil, err
		}
		out[field.JSONName()] = v
	}
	return out, nil
}

func listItems(field protoreflect.FieldDescriptor, raw any, where string) ([]any, error) {
	if wrapper, ok := raw.(map[string]any); ok && len(wrapper) == 1 {
		for _, inner := range wrapper { // MPS's {"String": [...]} wrapper
			raw = inner
		}
	}
	if text, ok := raw.(string); ok {
		if field.Kind() == protoreflect.StringKind {
			var items []any
			for _, part := range strings.Split(text, ",") {
				if part = strings.TrimSpace(part); part != "" {
					items = append(items, part)
				}
			}
			return items, nil
		}
		parsed, err := parseJSONText(text, where)
		if err != nil {
			return nil, err
		}
		raw = parsed
	}
	if items, ok := raw.([]any); ok {
		return items, nil
	}
	return []any{raw}, nil
}

func normalizeValue(field protoreflect.FieldDescriptor, value any, where string) (any, error) {
	switch field.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		if strings.HasPrefix(string(field.Message().FullName()), "google.protobuf.") {
			return value, nil // well-known types: protojson reads "2021-05-19T03:11:48Z" etc.
		}
		return normalizeMessage(field.Message(), value, where)
	case protoreflect.BoolKind:
		switch v := value.(type) {
		case bool:
			return v, nil
		case string:
			switch strings.ToLower(strings.TrimSpace(v)) {
			case "true":
				return true, nil
			case "false":
				return false, nil
			}
		}
		return nil, fmt.Errorf("%s: expected \"true\" or \"false\", got %v", where, value)
	case protoreflect.StringKind:
		switch v := value.(type) {
		case string:
			return v, nil
		case json.Number:
			return v.String(), nil
		case bool:
			return fmt.Sprint(v), nil
		}
		return nil, fmt.Errorf("%s: expected a string, got %v", where, value)
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind,
		protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind,
		protoreflect.Uint32Kind, protoreflect.Fixed32Kind, protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		text := strings.TrimSpace(fmt.Sprint(value))
		if !integer.MatchString(text) {
			return nil, fmt.Errorf("%s: expected an integer, got %v", where, value)
		}
		return json.Number(text), nil
	default:
		if text, ok := value.(string); ok {
			return strings.TrimSpace(text), nil // protojson takes numbers as strings too
		}
		return value, nil
	}
}

var integer = regexp.MustCompile(`^-?[0-9]+$`)
