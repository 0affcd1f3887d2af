// stream_engine/native/include/msync/json.h
//
// A minimal JSON reader, written for the few JSON values the native runtime reads: the `msync.*` metadata of
// an exported step model (objects, lists, strings, integers) and a user's reference-face file (a 68 x 2 list).
// It parses RFC 8259 JSON into a small value tree; it does not write JSON (the CLI formats its few outputs by
// hand). Numbers are kept as double plus a flag telling whether the literal was an integer.
//
// Usage:
//   msync::json::Value v = msync::json::Parse(text);        // throws msync::json::ParseError
//   const auto& states = v.AsArray();                        // throws msync::json::TypeError on a wrong type
//   std::string name = states[0].At("name").AsString();
#ifndef MSYNC_JSON_H_
#define MSYNC_JSON_H_

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace msync {
namespace json {

/// Malformed JSON text; what() gives the byte offset.
class ParseError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A value of another type than the caller asked for, or a missing object key.
class TypeError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Value {
 public:
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };
  using Array = std::vector<Value>;
  using Object = std::vector<std::pair<std::string, Value>>;  // keeps the file's key order

  Value() = default;

  Type type() const { return type_; }
  bool IsNull() const { return type_ == Type::kNull; }
  bool IsBool() const { return type_ == Type::kBool; }
  bool IsNumber() const { return type_ == Type::kNumber; }
  bool IsString() const { return type_ == Type::kString; }
  bool IsArray() const { return type_ == Type::kArray; }
  bool IsObject() const { return type_ == Type::kObject; }
  /// A number written without fraction or exponent that fits in int64.
  bool IsInteger() const { return type_ == Type::kNumber && is_integer_; }

  bool AsBool() const {
    Expect(Type::kBool);
    return bool_;
  }
  double AsNumber() const {
    Expect(Type::kNumber);
    return number_;
  }
  int64_t AsInteger() const {
    if (!IsInteger()) throw TypeError("expected an integer, got " + Describe());
    return integer_;
  }
  const std::string& AsString() const {
    Expect(Type::kString);
    return string_;
  }
  const Array& AsArray() const {
    Expect(Type::kArray);
    return array_;
  }
  const Object& AsObject() const {
    Expect(Type::kObject);
    return object_;
  }

  /// Member of an object, or nullptr when absent (or when this is not an object).
  const Value* Find(const std::string& key) const {
    if (type_ != Type::kObject) return nullptr;
    for (const auto& kv : object_) {
      if (kv.first == key) return &kv.second;
    }
    return nullptr;
  }
  /// Member of an object; throws TypeError when absent.
  const Value& At(const std::string& key) const {
    Expect(Type::kObject);
    const Value* v = Find(key);
    if (v == nullptr) throw TypeError("missing key \"" + key + "\"");
    return *v;
  }

  /// Short description for error messages: the type, and the value for scalars.
  std::string Describe() const {
    switch (type_) {
      case Type::kNull: return "null";
      case Type::kBool: return bool_ ? "true" : "false";
      case Type::kNumber: return "number " + FormatNumber();
      case Type::kString: return "string \"" + string_ + "\"";
      case Type::kArray: return "a list of " + std::to_string(array_.size());
      case Type::kObject: return "an object";
    }
    return "?";
  }

 private:
  friend class Parser;

  void Expect(Type t) const {
    if (type_ != t) throw TypeError("expected " + TypeName(t) + ", got " + Describe());
  }
  static std::string TypeName(Type t) {
    switch (t) {
      case Type::kNull: return "null";
      case Type::kBool: return "a boolean";
      case Type::kNumber: return "a number";
      case Type::kString: return "a string";
      case Type::kArray: return "a list";
      case Type::kObject: return "an object";
    }
    return "?";
  }
  std::string FormatNumber() const {
    if (is_integer_) return std::to_string(integer_);
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.17g", number_);
    return buf;
  }

  Type type_ = Type::kNull;
  bool bool_ = false;
  bool is_integer_ = false;
  double number_ = 0.0;
  int64_t integer_ = 0;
  std::string string_;
  Array array_;
  Object object_;
};

/// Recursive-descent parser over the whole text (no streaming); nesting is limited to kMaxDepth.
class Parser {
 public:
  static constexpr int kMaxDepth = 64;

  explicit Parser(const std::string& text) : s_(text) {}

  Value ParseDocument() {
    Value v = ParseValue(0);
    SkipSpace();
    if (pos_ != s_.size()) Fail("trailing characters after the JSON value");
    return v;
  }

 private:
  [[noreturn]] void Fail(const std::string& what) const {
    throw ParseError("invalid JSON at byte " + std::to_string(pos_) + ": " + what);
  }
  void SkipSpace() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) ++pos_;
  }
  char Peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }
  bool Consume(const char* word) {
    size_t n = std::char_traits<char>::length(word);
    if (s_.compare(pos_, n, word) == 0) {
      pos_ += n;
      return true;
    }
    return false;
  }

  Value ParseValue(int depth) {
    if (depth > kMaxDepth) Fail("nesting deeper than " + std::to_string(kMaxDepth));
    SkipSpace();
    Value v;
    char c = Peek();
    if (c == '{') {
      v.type_ = Value::Type::kObject;
      ++pos_;
      SkipSpace();
      if (Peek() == '}') {
        ++pos_;
        return v;
      }
      while (true) {
        SkipSpace();
        if (Peek() != '"') Fail("expected a string key");
        std::string key = ParseString();
        SkipSpace();
        if (Peek() != ':') Fail("expected ':' after an object key");
        ++pos_;
        v.object_.emplace_back(std::move(key), ParseValue(depth + 1));
        SkipSpace();
        if (Peek() == ',') {
          ++pos_;
        } else if (Peek() == '}') {
          ++pos_;
          return v;
        } else {
          Fail("expected ',' or '}' in an object");
        }
      }
    }
    if (c == '[') {
      v.type_ = Value::Type::kArray;
      ++pos_;
      SkipSpace();
      if (Peek() == ']') {
        ++pos_;
        return v;
      }
      while (true) {
        v.array_.push_back(ParseValue(depth + 1));
        SkipSpace();
        if (Peek() == ',') {
          ++pos_;
        } else if (Peek() == ']') {
          ++pos_;
          return v;
        } else {
          Fail("expected ',' or ']' in a list");
        }
      }
    }
    if (c == '"') {
      v.type_ = Value::Type::kString;
      v.string_ = ParseString();
      return v;
    }
    if (Consume("true")) {
      v.type_ = Value::Type::kBool;
      v.bool_ = true;
      return v;
    }
    if (Consume("false")) {
      v.type_ = Value::Type::kBool;
      return v;
    }
    if (Consume("null")) return v;
    if (c == '-' || (c >= '0' && c <= '9')) return ParseNumber();
    if (pos_ >= s_.size()) Fail("unexpected end of text");
    Fail(std::string("unexpected character '") + c + "'");
  }

  Value ParseNumber() {
    // Grammar check first (strtod alone accepts "inf", hex, leading '+', ...), then convert.
    size_t start = pos_;
    bool integer = true;
    if (Peek() == '-') ++pos_;
    if (Peek() == '0') {
      ++pos_;
    } else if (Peek() >= '1' && Peek() <= '9') {
      while (Peek() >= '0' && Peek() <= '9') ++pos_;
    } else {
      Fail("malformed number");
    }
    if (Peek() == '.') {
      integer = false;
      ++pos_;
      if (!(Peek() >= '0' && Peek() <= '9')) Fail("malformed number: digits expected after '.'");
      while (Peek() >= '0' && Peek() <= '9') ++pos_;
    }
    if (Peek() == 'e' || Peek() == 'E') {
      integer = false;
      ++pos_;
      if (Peek() == '+' || Peek() == '-') ++pos_;
      if (!(Peek() >= '0' && Peek() <= '9')) Fail("malformed number: digits expected in the exponent");
      while (Peek() >= '0' && Peek() <= '9') ++pos_;
    }
    std::string lit = s_.substr(start, pos_ - start);
    Value v;
    v.type_ = Value::Type::kNumber;
    v.number_ = std::strtod(lit.c_str(), nullptr);
    if (!std::isfinite(v.number_)) Fail("number out of range: " + lit);
    if (integer) {
      errno = 0;
      long long i = std::strtoll(lit.c_str(), nullptr, 10);
      if (errno == 0) {
        v.is_integer_ = true;
        v.integer_ = static_cast<int64_t>(i);
      }
    }
    return v;
  }

  static void AppendUtf8(std::string* out, uint32_t cp) {
    if (cp < 0x80) {
      out->push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }

  uint32_t ParseHex4() {
    if (pos_ + 4 > s_.size()) Fail("truncated \\u escape");
    uint32_t cp = 0;
    for (int i = 0; i < 4; ++i) {
      char h = s_[pos_++];
      cp <<= 4;
      if (h >= '0' && h <= '9') {
        cp |= static_cast<uint32_t>(h - '0');
      } else if (h >= 'a' && h <= 'f') {
        cp |= static_cast<uint32_t>(h - 'a' + 10);
      } else if (h >= 'A' && h <= 'F') {
        cp |= static_cast<uint32_t>(h - 'A' + 10);
      } else {
        Fail("bad hex digit in \\u escape");
      }
    }
    return cp;
  }

  std::string ParseString() {
    ++pos_;  // opening quote
    std::string out;
    while (true) {
      if (pos_ >= s_.size()) Fail("unterminated string");
      char c = s_[pos_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) Fail("control character in a string");
      if (c != '\\') {
        out.push_back(c);  // UTF-8 bytes pass through unchanged
        continue;
      }
      if (pos_ >= s_.size()) Fail("unterminated escape");
      char e = s_[pos_++];
      switch (e) {
        case '"': out.push_back('"'); break;
        case '\\': out.push_back('\\'); break;
        case '/': out.push_back('/'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        case 'u': {
          uint32_t cp = ParseHex4();
          if (cp >= 0xD800 && cp <= 0xDBFF) {  // surrogate pair (what Python's json.dumps writes for non-BMP)
            if (!Consume("\\u")) Fail("lone high surrogate");
            uint32_t lo = ParseHex4();
            if (lo < 0xDC00 || lo > 0xDFFF) Fail("bad low surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            Fail("lone low surrogate");
          }
          AppendUtf8(&out, cp);
          break;
        }
        default: Fail(std::string("unknown escape '\\") + e + "'");
      }
    }
  }

  const std::string& s_;
  size_t pos_ = 0;
};

/// Parse a whole JSON document. Throws ParseError.
inline Value Parse(const std::string& text) { return Parser(text).ParseDocument(); }

}  // namespace json
}  // namespace msync

#endif  // MSYNC_JSON_H_
