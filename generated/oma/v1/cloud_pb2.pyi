from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CloudZone(_message.Message):
    __slots__ = ("id", "name", "allocation_state", "network_type", "oma_zone")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALLOCATION_STATE_FIELD_NUMBER: _ClassVar[int]
    NETWORK_TYPE_FIELD_NUMBER: _ClassVar[int]
    OMA_ZONE_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    allocation_state: str
    network_type: str
    oma_zone: bool
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., allocation_state: _Optional[str] = ..., network_type: _Optional[str] = ..., oma_zone: bool = ...) -> None: ...

class CloudNetwork(_message.Message):
    __slots__ = ("id", "name", "zone_id", "state", "type", "cidr", "gateway")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ZONE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    CIDR_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    zone_id: str
    state: str
    type: str
    cidr: str
    gateway: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., zone_id: _Optional[str] = ..., state: _Optional[str] = ..., type: _Optional[str] = ..., cidr: _Optional[str] = ..., gateway: _Optional[str] = ...) -> None: ...

class CloudServiceOffering(_message.Message):
    __slots__ = ("id", "name", "cpu_count", "cpu_speed_mhz", "memory_mib", "customized")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    CPU_SPEED_MHZ_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MIB_FIELD_NUMBER: _ClassVar[int]
    CUSTOMIZED_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    cpu_count: int
    cpu_speed_mhz: int
    memory_mib: int
    customized: bool
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., cpu_count: _Optional[int] = ..., cpu_speed_mhz: _Optional[int] = ..., memory_mib: _Optional[int] = ..., customized: bool = ...) -> None: ...

class CloudDiskOffering(_message.Message):
    __slots__ = ("id", "name", "disk_size_bytes", "customized", "storage_type")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISK_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CUSTOMIZED_FIELD_NUMBER: _ClassVar[int]
    STORAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    disk_size_bytes: int
    customized: bool
    storage_type: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., disk_size_bytes: _Optional[int] = ..., customized: bool = ..., storage_type: _Optional[str] = ...) -> None: ...

class CloudTemplate(_message.Message):
    __slots__ = ("id", "name", "zone_id", "ready", "size_bytes", "os_type", "hypervisor", "format", "failover_default")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ZONE_ID_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    OS_TYPE_FIELD_NUMBER: _ClassVar[int]
    HYPERVISOR_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    FAILOVER_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    zone_id: str
    ready: bool
    size_bytes: int
    os_type: str
    hypervisor: str
    format: str
    failover_default: bool
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., zone_id: _Optional[str] = ..., ready: bool = ..., size_bytes: _Optional[int] = ..., os_type: _Optional[str] = ..., hypervisor: _Optional[str] = ..., format: _Optional[str] = ..., failover_default: bool = ...) -> None: ...

class ListZonesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListZonesResponse(_message.Message):
    __slots__ = ("zones", "next_page_token")
    ZONES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    zones: _containers.RepeatedCompositeFieldContainer[CloudZone]
    next_page_token: str
    def __init__(self, zones: _Optional[_Iterable[_Union[CloudZone, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListNetworksRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "zone_id")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ZONE_ID_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    zone_id: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., zone_id: _Optional[str] = ...) -> None: ...

class ListNetworksResponse(_message.Message):
    __slots__ = ("networks", "next_page_token")
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    networks: _containers.RepeatedCompositeFieldContainer[CloudNetwork]
    next_page_token: str
    def __init__(self, networks: _Optional[_Iterable[_Union[CloudNetwork, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListServiceOfferingsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListServiceOfferingsResponse(_message.Message):
    __slots__ = ("service_offerings", "next_page_token")
    SERVICE_OFFERINGS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    service_offerings: _containers.RepeatedCompositeFieldContainer[CloudServiceOffering]
    next_page_token: str
    def __init__(self, service_offerings: _Optional[_Iterable[_Union[CloudServiceOffering, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListDiskOfferingsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDiskOfferingsResponse(_message.Message):
    __slots__ = ("disk_offerings", "next_page_token")
    DISK_OFFERINGS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    disk_offerings: _containers.RepeatedCompositeFieldContainer[CloudDiskOffering]
    next_page_token: str
    def __init__(self, disk_offerings: _Optional[_Iterable[_Union[CloudDiskOffering, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListTemplatesRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "zone_id")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ZONE_ID_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    zone_id: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., zone_id: _Optional[str] = ...) -> None: ...

class ListTemplatesResponse(_message.Message):
    __slots__ = ("templates", "next_page_token")
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    templates: _containers.RepeatedCompositeFieldContainer[CloudTemplate]
    next_page_token: str
    def __init__(self, templates: _Optional[_Iterable[_Union[CloudTemplate, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
