{
 "key": "0551c8948f5b38e6",
 "signature": "YQ4S3Fqlc/7azais1JbKOgBIbgYOPr8ENWXdlaGBcBszwz3E9fGQfVyCGpmsafd72IqxaiTr8XCNs6GtqDdACA=="
}
