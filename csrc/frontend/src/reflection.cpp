// Server reflection, grpc.reflection.v1alpha, answered from the descriptors compiled into this
// library (protobuf's generated pool): inference.GRPCInferenceService, grpc.health.v1.Health
// and the reflection service itself are listed. Messages are read and written by field number
// (reflection.proto: request 1 host, 3 file_by_filename, 4 file_containing_symbol,
// 5 file_containing_extension {1 containing_type, 2 extension_number},
// 6 all_extension_numbers_of_type, 7 list_services; response 1 valid_host, 2 original_request,
// 4 file_descriptor_response {1 repeated file_descriptor_proto}, 5 all_extension_numbers_response
// {1 base_type_name, 2 repeated extension_number}, 6 list_services_response {1 repeated
// {1 name}}, 7 error_response {1 error_code, 2 error_message}), so that no reflection message
// types are registered here beside gRPC's own.
#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/unknown_field_set.h>

#include <set>
#include <string_view>
#include <vector>

#include "services.h"

namespace inferline::grpcfe {

namespace {

using google::protobuf::DescriptorPool;
using google::protobuf::FileDescriptor;
using google::protobuf::UnknownField;
using google::protobuf::UnknownFieldSet;

void PutVarint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}
void PutBytes(std::string* out, int field, std::string_view bytes) {
  PutVarint(out, static_cast<uint64_t>(field) << 3 | 2);
  PutVarint(out, bytes.size());
  out->append(bytes);
}
void PutInt(std::string* out, int field, int64_t value) {
  PutVarint(out, static_cast<uint64_t>(field) << 3);
  PutVarint(out, static_cast<uint64_t>(value));
}

std::string Error(int code, std::string_view message) {
  std::string e;
  PutInt(&e, 1, code);
  PutBytes(&e, 2, message);
  std::string out;
  PutBytes(&out, 7, e);
  return out;
}

// `file` and every file it depends on, each once, as serialized FileDescriptorProtos.
std::string Files(const FileDescriptor* file) {
  std::vector<const FileDescriptor*> todo{file};
  std::set<const FileDescriptor*> seen{file};
  std::string files;
  while (!todo.empty()) {
    const FileDescriptor* f = todo.back();
    todo.pop_back();
    google::protobuf::FileDescriptorProto proto;
    f->CopyTo(&proto);
    PutBytes(&files, 1, proto.SerializeAsString());
    for (int i = 0; i < f->dependency_count(); ++i) {
      if (seen.insert(f->dependency(i)).second) todo.push_back(f->dependency(i));
    }
  }
  std::string out;
  PutBytes(&out, 4, files);
  return out;
}

std::string Answer(const UnknownFieldSet& request) {
  constexpr int kNotFound = 5, kInvalidArgument = 3;
  const DescriptorPool* pool = DescriptorPool::generated_pool();
  for (int i = 0; i < request.field_count(); ++i) {
    const UnknownField& f = request.field(i);
    if (f.type() != UnknownField::TYPE_LENGTH_DELIMITED) continue;
    const std::string& text = f.length_delimited();
    switch (f.number()) {
      case 3:
        if (const FileDescriptor* file = pool->FindFileByName(text)) return Files(file);
        return Error(kNotFound, "File not found.");
      case 4:
        if (const FileDescriptor* file = pool->FindFileContainingSymbol(text)) return Files(file);
        return Error(kNotFound, "Symbol not found.");
      case 5: {
        UnknownFieldSet ext;
        std::string type;
        int64_t number = -1;
        if (ext.ParseFromString(text)) {
          for (int j = 0; j < ext.field_count(); ++j) {
            const UnknownField& e = ext.field(j);
            if (e.number() == 1 && e.type() == UnknownField::TYPE_LENGTH_DELIMITED) type = e.length_delimited();
            if (e.number() == 2 && e.type() == UnknownField::TYPE_VARINT) number = static_cast<int32_t>(e.varint());
          }
        }
        const google::protobuf::Descriptor* message = pool->FindMessageTypeByName(type);
        if (message == nullptr) return Error(kNotFound, "Type not found.");
        const google::protobuf::FieldDescriptor* field = pool->FindExtensionByNumber(message, static_cast<int>(number));
        if (field == nullptr) return Error(kNotFound, "Extension not found.");
        return Files(field->file());
      }
      case 6: {
        const google::protobuf::Descriptor* message = pool->FindMessageTypeByName(text);
        if (message == nullptr) return Error(kNotFound, "Type not found.");
        std::vector<const google::protobuf::FieldDescriptor*> extensions;
        pool->FindAllExtensions(message, &extensions);
        std::string numbers;
        PutBytes(&numbers, 1, message->full_name());
        for (const auto* e : extensions) PutInt(&numbers, 2, e->number());
        std::string out;
        PutBytes(&out, 5, numbers);
        return out;
      }
      case 7: {
        std::string list;
        for (const char* name : {kInferenceService, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}) {
          std::string service;
          PutBytes(&service, 1, name);
          PutBytes(&list, 1, service);
        }
        std::string out;
        PutBytes(&out, 6, list);
        return out;
      }
      default:
        break;
    }
  }
  return Error(kInvalidArgument, "no request this server understands (file_by_filename, file_containing_symbol, "
                                 "file_containing_extension, all_extension_numbers_of_type, list_services)");
}

}  // namespace

std::string ReflectionAnswer(const std::string& request) {
  UnknownFieldSet fields;
  std::string out;
  std::string host;
  if (!fields.ParseFromString(request)) {
    out = Error(3, "malformed ServerReflectionRequest");
  } else {
    for (int i = 0; i < fields.field_count(); ++i) {
      const UnknownField& f = fields.field(i);
      if (f.number() == 1 && f.type() == UnknownField::TYPE_LENGTH_DELIMITED) host = f.length_delimited();
    }
    out = Answer(fields);
  }
  std::string head;
  if (!host.empty()) PutBytes(&head, 1, host);
  PutBytes(&head, 2, request);
  return head + out;
}

}  // namespace inferline::grpcfe
