// stream_engine/native/src/contract.cc
//
// Reading and checking the `msync.*` metadata contract (see contract.h and stream_engine/contract.py).
#include "msync/contract.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <sstream>

#include "msync/json.h"

namespace msync {
namespace {

constexpr const char* kPrefix = "msync.";

const char* const kRequiredKeys[] = {
    "contract_version", "sample_rate_hz", "samples_per_frame", "fps",          "lookahead_frames",
    "num_landmarks",    "landmark_dims",  "landmark_layout",   "coordinates",  "audio_input",
    "landmarks_output", "states",         "reference_face",    "model_version", "training_data",
    "generator_config", "frontend",
};
const char* const kInitKinds[] = {"zeros", "uniform(0,1)", "reference_face"};

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) out += ", ";
    out += shape[i] == kBatchDim ? std::string("'B'") : std::to_string(shape[i]);
  }
  return out + "]";
}

std::string GraphShapeString(const GraphTensor& t) {
  if (!t.has_shape) return "unknown";
  std::string out = "[";
  for (size_t i = 0; i < t.shape.size(); ++i) {
    if (i) out += ", ";
    out += t.shape[i] < 0 ? std::string("?") : std::to_string(t.shape[i]);
  }
  return out + "]";
}

std::string ListString(const std::vector<std::string>& names) {
  std::string out = "[";
  for (size_t i = 0; i < names.size(); ++i) out += (i ? ", '" : "'") + names[i] + "'";
  return out + "]";
}

// Contract shapes: a JSON list of positive integers and "B".
std::vector<int64_t> ParseShape(const json::Value& v, const std::string& where) {
  if (!v.IsArray()) throw ContractError(std::string(kPrefix) + where + ": shape must be a list");
  std::vector<int64_t> out;
  for (const auto& d : v.AsArray()) {
    if (d.IsString() && d.AsString() == "B") {
      out.push_back(kBatchDim);
    } else if (d.IsInteger()) {
      out.push_back(d.AsInteger());
    } else {
      throw ContractError(std::string(kPrefix) + where + ": shape entries must be integers or 'B', got " +
                          d.Describe());
    }
  }
  return out;
}

std::string StringField(const json::Value& obj, const char* key, const std::string& fallback, bool required,
                        const std::string& where) {
  const json::Value* v = obj.Find(key);
  if (v == nullptr) {
    if (required) throw ContractError(std::string(kPrefix) + where + " lacks '" + key + "'");
    return fallback;
  }
  if (!v->IsString()) throw ContractError(std::string(kPrefix) + where + "." + key + " must be a string");
  return v->AsString();
}

json::Value ParseJsonKey(const std::map<std::string, std::string>& meta, const std::string& key) {
  try {
    return json::Parse(meta.at(key));
  } catch (const json::ParseError& e) {
    throw ContractError(std::string(kPrefix) + key + " is not valid JSON (" + e.what() + ")");
  }
}

int64_t IntegerKey(const std::map<std::string, std::string>& meta, const std::string& key) {
  const std::string& s = meta.at(key);
  char* end = nullptr;
  errno = 0;
  long long v = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || errno != 0 || end == s.c_str() || *end != '\0') {
    throw ContractError(std::string(kPrefix) + key + " must be an integer, got '" + s + "'");
  }
  return static_cast<int64_t>(v);
}

double NumberKey(const std::map<std::string, std::string>& meta, const std::string& key) {
  const std::string& s = meta.at(key);
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (s.empty() || end == s.c_str() || *end != '\0' || !std::isfinite(v)) {
    throw ContractError(std::string(kPrefix) + key + " must be a number, got '" + s + "'");
  }
  return v;
}

TensorSpec ParseTensor(const std::map<std::string, std::string>& meta, const std::string& key) {
  json::Value v = ParseJsonKey(meta, key);
  if (!v.IsObject() || v.Find("name") == nullptr || v.Find("shape") == nullptr) {
    throw ContractError(std::string(kPrefix) + key + " must be a JSON object with 'name' and 'shape', got '" +
                        meta.at(key) + "'");
  }
  TensorSpec t;
  t.name = StringField(v, "name", "", true, key);
  t.shape = ParseShape(v.At("shape"), key);
  t.dtype = StringField(v, "dtype", "float32", false, key);
  t.description = StringField(v, "description", "", false, key);
  return t;
}

// Integer member `key` of a JSON object, if present and an integer.
bool IntMember(const json::Value& obj, const char* key, int64_t* out) {
  const json::Value* v = obj.Find(key);
  if (v == nullptr || !v->IsNumber()) return false;
  double d = v->AsNumber();
  if (d != std::floor(d)) return false;
  *out = static_cast<int64_t>(d);
  return true;
}

std::vector<float> FaceFromJson(const json::Value& v, int64_t n, int64_t d, const std::string& what) {
  const json::Value* rows = &v;
  if (v.IsObject()) {
    rows = v.Find("landmarks");
    if (rows == nullptr) throw ContractError(what + ": a JSON object must hold the face under \"landmarks\"");
  }
  if (!rows->IsArray() || static_cast<int64_t>(rows->AsArray().size()) != n) {
    throw ContractError(what + " must be a finite " + std::to_string(n) + "x" + std::to_string(d) +
                        " list, got " + rows->Describe());
  }
  std::vector<float> face;
  face.reserve(static_cast<size_t>(n * d));
  for (const auto& row : rows->AsArray()) {
    if (!row.IsArray() || static_cast<int64_t>(row.AsArray().size()) != d) {
      throw ContractError(what + " must be a finite " + std::to_string(n) + "x" + std::to_string(d) +
                          " list; a row is " + row.Describe());
    }
    for (const auto& x : row.AsArray()) {
      if (!x.IsNumber() || !std::isfinite(x.AsNumber())) {
        throw ContractError(what + " must be a finite " + std::to_string(n) + "x" + std::to_string(d) +
                            " list of numbers; found " + x.Describe());
      }
      face.push_back(static_cast<float>(x.AsNumber()));
    }
  }
  return face;
}

}  // namespace

std::vector<int64_t> TensorSpec::ConcreteShape(int64_t batch) const {
  std::vector<int64_t> out(shape);
  for (auto& d : out) {
    if (d == kBatchDim) d = batch;
  }
  return out;
}

int64_t TensorSpec::Numel(int64_t batch) const {
  int64_t n = 1;
  for (int64_t d : ConcreteShape(batch)) n *= d;
  return n;
}

int StepContract::StateIndex(const std::string& name) const {
  for (size_t i = 0; i < states.size(); ++i) {
    if (states[i].name == name) return static_cast<int>(i);
  }
  return -1;
}

std::string StepContract::Summary() const {
  std::ostringstream o;
  o << "contract v" << contract_version << ": " << sample_rate_hz << " Hz, " << samples_per_frame
    << " samples/step, " << fps << " fps, look-ahead " << lookahead_frames << " frames, " << num_landmarks << "x"
    << landmark_dims << " landmarks, model " << model_version << "; states:";
  for (const auto& s : states) o << " " << s.name << ShapeString(s.shape) << "=" << s.init;
  return o.str();
}

StepContract StepContract::FromMetadata(const std::map<std::string, std::string>& metadata) {
  std::map<std::string, std::string> meta;
  const std::string prefix(kPrefix);
  for (const auto& kv : metadata) {
    if (kv.first.compare(0, prefix.size(), prefix) == 0) meta[kv.first.substr(prefix.size())] = kv.second;
  }
  if (meta.find("contract_version") == meta.end()) {
    throw ContractError(
        "no msync contract in this model (metadata key 'msync.contract_version' is missing): export it with "
        "`msync export`");
  }
  if (meta["contract_version"] != kContractVersion) {
    throw ContractError("unsupported msync contract version '" + meta["contract_version"] +
                        "' (this runtime understands '" + kContractVersion + "')");
  }
  std::vector<std::string> missing;
  for (const char* k : kRequiredKeys) {
    if (meta.find(k) == meta.end()) missing.push_back(prefix + k);
  }
  if (!missing.empty()) throw ContractError("model metadata lacks the contract keys " + ListString(missing));

  StepContract c;
  c.contract_version = meta["contract_version"];
  c.sample_rate_hz = IntegerKey(meta, "sample_rate_hz");
  c.samples_per_frame = IntegerKey(meta, "samples_per_frame");
  c.fps = NumberKey(meta, "fps");
  c.lookahead_frames = IntegerKey(meta, "lookahead_frames");
  c.num_landmarks = IntegerKey(meta, "num_landmarks");
  c.landmark_dims = IntegerKey(meta, "landmark_dims");
  c.landmark_layout = meta["landmark_layout"];
  c.coordinates = meta["coordinates"];
  c.audio_input = ParseTensor(meta, "audio_input");
  c.landmarks_output = ParseTensor(meta, "landmarks_output");

  json::Value raw_states = ParseJsonKey(meta, "states");
  if (!raw_states.IsArray()) throw ContractError(prefix + "states must be a JSON list, got " + raw_states.Describe());
  const auto& arr = raw_states.AsArray();
  for (size_t i = 0; i < arr.size(); ++i) {
    const std::string where = "states[" + std::to_string(i) + "]";
    if (!arr[i].IsObject()) throw ContractError(prefix + where + " must be an object, got " + arr[i].Describe());
    std::vector<std::string> lacking;
    for (const char* k : {"name", "next_name", "shape", "dtype", "init"}) {
      if (arr[i].Find(k) == nullptr) lacking.push_back(k);
    }
    if (!lacking.empty()) {
      const json::Value* n = arr[i].Find("name");
      throw ContractError(prefix + where + " (" + (n && n->IsString() ? n->AsString() : "?") + ") lacks " +
                          ListString(lacking));
    }
    StateSpec s;
    s.name = StringField(arr[i], "name", "", true, where);
    s.next_name = StringField(arr[i], "next_name", "", true, where);
    s.shape = ParseShape(arr[i].At("shape"), where);
    s.dtype = StringField(arr[i], "dtype", "", true, where);
    s.init = StringField(arr[i], "init", "", true, where);
    c.states.push_back(s);
  }

  json::Value face = ParseJsonKey(meta, "reference_face");
  if (!face.IsArray()) throw ContractError(prefix + "reference_face must be a list of coordinate lists");
  for (const auto& row : face.AsArray()) {
    if (!row.IsArray()) throw ContractError(prefix + "reference_face must be a list of coordinate lists");
  }
  // Shape and finiteness are checked in Validate (as in contract.py); keep what is there.
  size_t rows = face.AsArray().size();
  size_t cols = rows ? face.AsArray()[0].AsArray().size() : 0;
  bool rectangular = true;
  for (const auto& row : face.AsArray()) {
    if (row.AsArray().size() != cols) rectangular = false;
    for (const auto& x : row.AsArray()) {
      if (!x.IsNumber()) throw ContractError(prefix + "reference_face must be a list of coordinate lists");
      c.reference_face.push_back(static_cast<float>(x.AsNumber()));
    }
  }
  if (!rectangular || static_cast<int64_t>(rows) != c.num_landmarks || static_cast<int64_t>(cols) != c.landmark_dims) {
    throw ContractError(prefix + "reference_face must be a finite " + std::to_string(c.num_landmarks) + "x" +
                        std::to_string(c.landmark_dims) + " list, got " + std::to_string(rows) + " rows of " +
                        std::to_string(cols) + (rectangular ? "" : " (ragged)"));
  }

  for (const char* key : {"generator_config", "frontend"}) {
    json::Value v = ParseJsonKey(meta, key);
    if (!v.IsObject()) throw ContractError(prefix + key + " must be a JSON object");
  }
  c.generator_config_json = meta["generator_config"];
  c.frontend_json = meta["frontend"];
  c.model_version = meta["model_version"];
  c.training_data = meta["training_data"];
  c.Validate();
  return c;
}

void StepContract::Validate() const {
  const std::string p(kPrefix);
  if (contract_version != kContractVersion) {
    throw ContractError("unsupported msync contract version '" + contract_version + "' (this runtime understands '" +
                        kContractVersion + "')");
  }
  const std::pair<const char*, int64_t> positives[] = {{"sample_rate_hz", sample_rate_hz},
                                                       {"samples_per_frame", samples_per_frame},
                                                       {"num_landmarks", num_landmarks},
                                                       {"landmark_dims", landmark_dims}};
  for (const auto& kv : positives) {
    if (kv.second <= 0) {
      throw ContractError(p + kv.first + " must be a positive integer, got " + std::to_string(kv.second));
    }
  }
  if (lookahead_frames < 0) {
    throw ContractError(p + "lookahead_frames must be an integer >= 0, got " + std::to_string(lookahead_frames));
  }
  double want_rate = fps * static_cast<double>(samples_per_frame);
  if (!(fps > 0) || std::fabs(want_rate - static_cast<double>(sample_rate_hz)) > 1e-9 * sample_rate_hz) {
    std::ostringstream o;
    o << "inconsistent timing: fps " << fps << " x samples_per_frame " << samples_per_frame << " != sample_rate_hz "
      << sample_rate_hz;
    throw ContractError(o.str());
  }
  const std::vector<int64_t> audio_shape = {kBatchDim, samples_per_frame};
  const std::vector<int64_t> lm_shape = {kBatchDim, num_landmarks, landmark_dims};
  if (audio_input.shape != audio_shape) {
    throw ContractError("audio input '" + audio_input.name + "' has shape " + ShapeString(audio_input.shape) +
                        ", expected " + ShapeString(audio_shape));
  }
  if (landmarks_output.shape != lm_shape) {
    throw ContractError("landmarks output '" + landmarks_output.name + "' has shape " +
                        ShapeString(landmarks_output.shape) + ", expected " + ShapeString(lm_shape));
  }
  for (const TensorSpec* t : {&audio_input, &landmarks_output}) {
    if (t->dtype != "float32") {
      throw ContractError("'" + t->name + "': unsupported dtype '" + t->dtype + "' (supported: ['float32'])");
    }
  }
  if (states.empty()) throw ContractError(p + "states is empty: a step model needs at least one state");
  for (const auto& s : states) {
    if (s.name.empty() || s.next_name.empty()) throw ContractError("a state needs both a name and a next_name");
    if (s.shape.empty() || s.shape[0] != kBatchDim) {
      throw ContractError("state '" + s.name + "': shape " + ShapeString(s.shape) +
                          " must start with the batch dim 'B'");
    }
    for (size_t i = 1; i < s.shape.size(); ++i) {
      if (s.shape[i] <= 0) {
        throw ContractError("state '" + s.name + "': non-batch dims must be positive integers, got " +
                            ShapeString(s.shape));
      }
    }
    if (s.dtype != "float32") {
      throw ContractError("state '" + s.name + "': unsupported dtype '" + s.dtype + "' (supported: ['float32'])");
    }
    if (std::find(std::begin(kInitKinds), std::end(kInitKinds), s.init) == std::end(kInitKinds)) {
      throw ContractError("state '" + s.name + "': unknown init '" + s.init +
                          "' (one of ['zeros', 'uniform(0,1)', 'reference_face'])");
    }
    if (s.init == "reference_face" && s.shape != lm_shape) {
      throw ContractError("state '" + s.name + "' starts from the reference face, so its shape must be " +
                          ShapeString(lm_shape) + ", got " + ShapeString(s.shape));
    }
  }
  std::vector<std::string> ins = {audio_input.name}, outs = {landmarks_output.name};
  for (const auto& s : states) {
    ins.push_back(s.name);
    outs.push_back(s.next_name);
  }
  for (const auto* lst : {&ins, &outs}) {
    std::set<std::string> seen, dup;
    for (const auto& n : *lst) {
      if (!seen.insert(n).second) dup.insert(n);
    }
    if (!dup.empty()) {
      throw ContractError(std::string("duplicate ") + (lst == &ins ? "input" : "output") + " names in the contract: " +
                          ListString(std::vector<std::string>(dup.begin(), dup.end())));
    }
  }
  std::vector<std::string> both;
  for (const auto& n : ins) {
    if (std::find(outs.begin(), outs.end(), n) != outs.end()) both.push_back(n);
  }
  if (!both.empty()) throw ContractError("names used both as input and output: " + ListString(both));
  bool finite = static_cast<int64_t>(reference_face.size()) == num_landmarks * landmark_dims;
  for (float x : reference_face) finite = finite && std::isfinite(x);
  if (!finite) {
    throw ContractError(p + "reference_face must be a finite " + std::to_string(num_landmarks) + "x" +
                        std::to_string(landmark_dims) + " list");
  }
  // Cross-checks with the front end and generator settings, when they carry the same quantities.
  json::Value fe = json::Parse(frontend_json.empty() ? "{}" : frontend_json);
  json::Value gc = json::Parse(generator_config_json.empty() ? "{}" : generator_config_json);
  int64_t v = 0;
  if (IntMember(fe, "sample_rate_hz", &v) && v != sample_rate_hz) {
    throw ContractError(p + "frontend sample_rate_hz " + std::to_string(v) + " != msync.sample_rate_hz " +
                        std::to_string(sample_rate_hz));
  }
  if (IntMember(fe, "samples_per_landmark_frame", &v) && v != samples_per_frame) {
    throw ContractError(p + "frontend samples_per_landmark_frame " + std::to_string(v) +
                        " != msync.samples_per_frame " + std::to_string(samples_per_frame));
  }
  if (IntMember(gc, "lookahead_frames", &v) && v != lookahead_frames) {
    throw ContractError(p + "generator_config lookahead_frames " + std::to_string(v) + " != msync.lookahead_frames " +
                        std::to_string(lookahead_frames));
  }
  if (IntMember(gc, "num_landmarks", &v) && v != num_landmarks) {
    throw ContractError(p + "generator_config num_landmarks " + std::to_string(v) + " != msync.num_landmarks " +
                        std::to_string(num_landmarks));
  }
}

void StepContract::CheckGraph(const std::vector<GraphTensor>& inputs, const std::vector<GraphTensor>& outputs,
                              const std::string& where) const {
  struct Want {
    std::string name;
    std::vector<int64_t> shape;
  };
  std::vector<Want> want_in = {{audio_input.name, audio_input.shape}};
  std::vector<Want> want_out = {{landmarks_output.name, landmarks_output.shape}};
  for (const auto& s : states) {
    want_in.push_back({s.name, s.shape});
    want_out.push_back({s.next_name, s.shape});
  }
  std::vector<std::string> problems;
  auto check = [&](const char* kind, const std::vector<Want>& want, const std::vector<GraphTensor>& got) {
    std::vector<std::string> lacking, extra;
    for (const auto& w : want) {
      auto it = std::find_if(got.begin(), got.end(), [&](const GraphTensor& g) { return g.name == w.name; });
      if (it == got.end()) {
        lacking.push_back(w.name);
        continue;
      }
      if (!it->is_float32) {
        problems.push_back(std::string(kind) + " '" + w.name + "': graph type " + it->type_name + ", contract float32");
      }
      bool ok = it->has_shape && it->shape.size() == w.shape.size();
      for (size_t i = 0; ok && i < w.shape.size(); ++i) {
        if (i == 0) continue;                        // batch: symbolic or any fixed size
        if (it->shape[i] >= 0 && it->shape[i] != w.shape[i]) ok = false;  // symbolic non-batch dims pass
      }
      if (!ok) {
        problems.push_back(std::string(kind) + " '" + w.name + "': graph shape " + GraphShapeString(*it) +
                           ", contract " + ShapeString(w.shape));
      }
    }
    for (const auto& g : got) {
      if (std::none_of(want.begin(), want.end(), [&](const Want& w) { return w.name == g.name; })) {
        extra.push_back(g.name);
      }
    }
    if (!lacking.empty()) problems.push_back(std::string("graph lacks ") + kind + "s " + ListString(lacking));
    if (!extra.empty()) {
      problems.push_back(std::string("graph has ") + kind + "s the contract does not name: " + ListString(extra));
    }
  };
  check("input", want_in, inputs);
  check("output", want_out, outputs);
  if (!problems.empty()) {
    std::string msg = where + ": the graph does not match its contract: ";
    for (size_t i = 0; i < problems.size(); ++i) msg += (i ? "; " : "") + problems[i];
    throw ContractError(msg);
  }
}

std::vector<float> ParseReferenceFace(const std::string& json_text, int64_t num_landmarks, int64_t landmark_dims,
                                      const std::string& where) {
  json::Value v;
  try {
    v = json::Parse(json_text);
  } catch (const json::ParseError& e) {
    throw ContractError(where + ": " + e.what());
  }
  return FaceFromJson(v, num_landmarks, landmark_dims, where + ": the reference face");
}

}  // namespace msync
